"""`flywheel backup`, `flywheel restore` and `flywheel prune`, through the real command line:
a backup taken while feedback is being written holds every acknowledged row, a restore
checks every hash and refuses to overwrite a live home, and pruning takes old conversations
out of the database and out of what past runs kept for training."""

import json
import subprocess
import sys
import threading
from pathlib import Path

from flywheel.cli import main
from storage import Home, adapters, open_db, runs
from storage import chat as store
from storage.backup import verify
from tests.conftest import make_adapter
from trainer import selection


def flywheel(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flywheel.cli", *args], capture_output=True,
                          text=True, timeout=300)


def seeded(home: Home, tiny_model_dir, answers: int = 30) -> list[str]:
    with open_db(home) as db:
        ids = []
        for i in range(answers):
            conv = store.create_conversation(db)
            q = store.add_message(db, conv, "user", f"question {i}")
            ids.append(store.add_message(db, conv, "assistant", f"answer {i}", q))
    make_adapter(tiny_model_dir, adapters.staging_path(home, "ad-1"), seed=1)
    with open_db(home) as db:
        adapters.publish(db, home, "ad-1", base_model="tiny-model0", method="sft")
        adapters.promote(db, "ad-1")
    return ids


def test_a_backup_taken_during_writes_restores_every_acknowledged_row(home, tiny_model_dir,
                                                                      tmp_path):
    answers = seeded(home, tiny_model_dir)
    acked: list[int] = []
    enough, stop, errors = threading.Event(), threading.Event(), []

    def write(n: int) -> None:
        with open_db(home) as db:
            i = 0
            while not stop.is_set():
                try:
                    ids = store.record_feedback(db, answers[(n + i) % len(answers)],
                                                "up" if i % 2 else "down", comment=f"{n}-{i}")
                except Exception as exc:  # collected: the assertion is that there are none
                    errors.append(exc)
                    return
                acked.append(ids["rating_id"])
                if len(acked) >= 200:
                    enough.set()
                i += 1
    writers = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in writers:
        t.start()
    assert enough.wait(120)
    before = list(acked)  # acknowledged before the backup began
    done = flywheel("backup", "--home", str(home.root), str(tmp_path / "backup"))
    stop.set()
    for t in writers:
        t.join()
    assert errors == [] and done.returncode == 0, done.stderr
    assert "1 adapter folders" in done.stdout and len(done.stdout.strip().splitlines()) == 1
    manifest = verify(tmp_path / "backup")
    assert manifest["adapters"] == ["ad-1"]
    assert {"flywheel.db", "adapters/ad-1/adapter_config.json"} <= set(manifest["files"])

    fresh = Home.resolve(tmp_path / "restored")
    done = flywheel("restore", "--home", str(fresh.root), str(tmp_path / "backup"))
    assert done.returncode == 0, done.stderr
    with open_db(fresh) as db:
        present = {r[0] for r in db.execute("SELECT id FROM ratings")}
        assert set(before) <= present and len(before) >= 200
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        row = adapters.active(db)
        assert row["id"] == "ad-1" and Path(row["path"]) == fresh.adapters_dir / "ad-1"
        assert (Path(row["path"]) / "adapter_model.safetensors").is_file()
        judged = db.execute("SELECT COUNT(*) FROM judgements WHERE rating IS NOT NULL"
                            ).fetchone()[0]
        assert judged == len({r[0] for r in db.execute("SELECT message_id FROM ratings")})


def test_restore_refuses_a_live_home_and_a_damaged_backup(home, tiny_model_dir, tmp_path,
                                                          capsys):
    seeded(home, tiny_model_dir, answers=3)
    assert main(["backup", "--home", str(home.root), str(tmp_path / "b")]) == 0
    assert main(["backup", "--home", str(home.root), str(tmp_path / "b")]) == 2  # not empty
    capsys.readouterr()
    assert main(["restore", "--home", str(home.root), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "already holds a database" in err and "--force" in err and len(err.splitlines()) == 1

    with open_db(home) as db:
        conv = store.create_conversation(db, title="after the backup")
    assert main(["restore", "--home", str(home.root), str(tmp_path / "b"), "--force"]) == 0
    with open_db(home) as db:
        assert store.get_conversation(db, conv) is None  # back to the backup's state
        assert db["messages"].count == 6

    weights = tmp_path / "b" / "adapters" / "ad-1" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    capsys.readouterr()
    elsewhere = Home.resolve(tmp_path / "elsewhere")
    assert main(["restore", "--home", str(elsewhere.root), str(tmp_path / "b")]) == 2
    assert "does not match its SHA-256" in capsys.readouterr().err
    assert not elsewhere.db_path.exists()  # nothing half-written


def test_prune_removes_old_conversations_everywhere_training_could_find_them(home, tmp_path,
                                                                             capsys):
    with open_db(home) as db:
        old, new = [], []
        for i, when in enumerate(["2024-01-05T10:00:00.000Z", "2099-01-01T10:00:00.000Z"] * 3):
            conv = store.create_conversation(db)
            db.execute("INSERT INTO messages (id, conversation_id, role, content, created_at) "
                       "VALUES (?, ?, 'user', 'q', ?)", [f"q{i}", conv, when])
            db.execute("INSERT INTO messages (id, conversation_id, parent_id, role, content, "
                       "created_at) VALUES (?, ?, ?, 'assistant', 'a', ?)",
                       [f"a{i}", conv, f"q{i}", when])
            store.record_feedback(db, f"a{i}", "up", correction=f"better {i}")
            (old if when < "2025" else new).append(f"a{i}")
        run = runs.start(db, base_model="m", method="sft", config={}, manifest={})
        runs.finish(db, run, metrics={}, adapter_id=None)
    replay = home.runs_dir / run / "sft-train.jsonl"
    (home.runs_dir / run / "data").mkdir(parents=True)
    replay.write_text("".join(json.dumps({"message_id": i, "message_ids": [i]}) + "\n"
                              for i in old + new))
    assert main(["prune", "--home", str(home.root), "--keep-days", "365"]) == 0
    out = capsys.readouterr().out
    assert "3 conversations" in out and "3 replay examples" in out
    with open_db(home) as db:
        assert {r[0] for r in db.execute("SELECT message_id FROM judgements")} == set(new)
        assert {r[0] for r in db.execute("SELECT message_id FROM ratings")} == set(new)
        assert db["corrections"].count == 3
        examples = selection.select(db)
        assert {e["message_ids"][0] for e in examples["sft"]} == set(new)
        assert sum(r["answers"] for r in db["thumbs_daily"].rows) == 3
    assert [json.loads(line)["message_id"] for line in replay.read_text().splitlines()] == new
    assert not (home.runs_dir / run / "data").exists()
    assert main(["prune", "--home", str(home.root), "--keep-days", "-1"]) == 2
