"""Kill `flywheel train` with SIGKILL at random points of a run, again and again: nothing
partial is ever served, the database stays consistent, and `--resume` finishes the run."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from storage import adapters, lock, open_db, runs
from tests.conftest import add_answers, make_adapter

pytestmark = pytest.mark.slow  # subprocess training or a real server


SETTINGS = ["validation_share=0.25", "anchor_share=0", "min_examples=8", "min_pairs=4",
            "sft.max_steps=30", "sft.eval_steps=5", "sft.batch_size=2", "sft.patience=1000",
            "dpo.max_steps=20", "dpo.eval_steps=5", "dpo.batch_size=2", "dpo.patience=1000",
            "gate.max_forgetting=100", "gate.heldout_loss_tolerance=100",
            "gate.degeneration_tolerance=1", "gate.max_unreadable_feedback=1",
            "gate.preference_accuracy_tolerance=1",
            "gate.anchor_examples=8", "gate.generation_prompts=8", "gate.max_new_tokens=48",
            "dpo.skip_if_added_words=0"]  # its corrections rewrite; DPO must run to be killed


def stage_step(progress: dict, stage: str, at_least: int) -> bool:
    return progress.get("stage", "").endswith(stage) and progress.get("step", 0) >= at_least


def kill_points(rng: random.Random) -> list[tuple[str, object]]:
    """Five moments of a run, the training ones at random steps."""
    early, later, dpo = rng.randint(1, 4), rng.randint(7, 24), rng.randint(2, 15)
    return [
        ("writing the run's data", lambda p: p.get("phase") == "data"),
        (f"SFT from step {early}", lambda p: stage_step(p, "sft", early)),
        (f"SFT from step {later}", lambda p: stage_step(p, "sft", later)),
        (f"DPO from step {dpo}", lambda p: stage_step(p, "dpo", dpo)),
        ("evaluating", lambda p: p.get("phase") == "evaluating"),
    ]


def newest_progress(home) -> dict:
    with open_db(home) as db:
        rows = runs.list_runs(db)
    return rows[-1]["progress"] if rows else {}


def assert_consistent(home, active_id: str) -> None:
    """What a server would load is whole, the old adapter still serves, the database is
    sound, the run is resumable and no dead process holds the lock."""
    conn = sqlite3.connect(home.db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()
    with open_db(home) as db:
        assert adapters.active(db)["id"] == active_id
        for row in adapters.servable(db, "tiny-model0"):
            assert load_file(os.path.join(row["path"], "adapter_model.safetensors"))
        [interrupted] = runs.unfinished(db)
    assert interrupted["status"] == "running"
    assert not lock.training_in_progress(home)


def test_killed_runs_serve_nothing_partial_and_resume_to_the_end(home, tiny_model_dir):
    seed = 0 if os.environ.get("CI") else random.randrange(10**6)
    print(f"kill seed {seed}")
    rng = random.Random(seed)
    add_answers(home, 24, correct_every=3)
    make_adapter(tiny_model_dir, adapters.staging_path(home, "ad-old"), seed=0)
    with open_db(home) as db:
        adapters.publish(db, home, "ad-old", base_model="tiny-model0", method="sft")
        adapters.promote(db, "ad-old")
    command = [sys.executable, "-m", "flywheel.cli", "train", "--home", str(home.root),
               "--model", str(tiny_model_dir), *[a for s in SETTINGS for a in ("--set", s)]]
    log = open(home.root / "crash-test.log", "w")
    resume = []
    for name, reached in kill_points(rng):
        proc = subprocess.Popen(command + resume, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while not reached(newest_progress(home)):
            assert proc.poll() is None, f"the run ended before it could be killed at {name}"
            assert time.monotonic() < deadline, f"never reached {name}"
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.1))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        print(f"killed at {name}: {newest_progress(home)}")
        assert_consistent(home, "ad-old")
        resume = ["--resume"]

    finished = subprocess.run(command + resume, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert "Resuming run-" in finished.stdout
    with open_db(home) as db:
        [run] = runs.list_runs(db)
        row = adapters.get(db, run["adapter_id"])
        assert adapters.active(db)["id"] == row["id"]
    assert run["status"] == "succeeded" and run["progress"]["phase"] == "done"
    sft, dpo = run["metrics"]["stages"]
    assert (sft["steps"], dpo["steps"]) == (30, 20)
    # SFT was cut after its first checkpoint (step 5) at the latest, so it went on from one;
    # DPO resumed from a checkpoint if one was written before its kill, else started over.
    assert sft["resumed_from"] is not None
    assert dpo["resumed_from"] in (None, *(f"checkpoint-{s}" for s in range(5, 20, 5)))
    assert load_file(os.path.join(row["path"], "adapter_model.safetensors"))
    assert not (home.staging_dir / row["id"]).exists()
    assert sorted(p.name for p in home.adapters_dir.iterdir() if p.name != ".staging") == \
        sorted(["ad-old", row["id"]])
