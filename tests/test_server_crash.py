"""Kill `flywheel serve` with SIGKILL while answers stream: at the next start every unfinished
answer is stored, marked `interrupted`, with the text it had; nothing acknowledged is lost;
the database is whole. And a database that cannot be used is one line, exit code 2."""

import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from contextlib import contextmanager

import httpx
import openai
import pytest

from assistant.server import ServeConfig, free_port, serve_in_thread
from storage import Home, init_db, open_db
from tests.conftest import health, wait_for

STREAMS = 6
# Prompts the tiny model answers with all 400 tokens (about a second each, one at a time).
LONG = ["hello", "a", "hi", "hello 2"]


def serve(home, tiny_model_dir, port, log):
    return subprocess.Popen(
        [sys.executable, "-m", "flywheel.cli", "serve", "--home", str(home.root), "--model",
         str(tiny_model_dir), "--port", str(port), "--max-batch-size", "1",
         "--limit", "journal_interval=0.1"], stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_answers_streaming_when_the_server_is_killed_are_kept_as_interrupted(home,
                                                                            tiny_model_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(home.root / "serve.log", "w")
    proc = serve(home, tiny_model_dir, port, log)
    try:
        wait_for(lambda: proc.poll() is not None or health(url), 120, "the server to start")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="local", max_retries=0)
        received = {}  # answer id -> text the client was shown

        def read(i: int) -> None:
            stream = client.chat.completions.create(
                model="flywheel", stream=True, max_tokens=400, temperature=0.0,
                messages=[{"role": "user", "content": LONG[i % len(LONG)]}])
            try:
                for chunk in stream:
                    received.setdefault(chunk.id, "")
                    if chunk.choices and chunk.choices[0].delta.content:
                        received[chunk.id] += chunk.choices[0].delta.content
            except (httpx.HTTPError, openai.APIError):
                pass  # the server died mid-stream
        readers = [threading.Thread(target=read, args=(i,)) for i in range(STREAMS)]
        for reader in readers:
            reader.start()

        def journaled() -> bool:  # an answer generating, its text on disk
            with open_db(home) as db:
                return db.execute("SELECT count(*) FROM partial_answers WHERE content != ''"
                                  ).fetchone()[0] >= 1
        wait_for(journaled, 120, "a running answer to be journaled", every=0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for reader in readers:
            reader.join(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()

    # Every answer a client saw start is stored at the next start, as interrupted.
    with serve_in_thread(home, ServeConfig(model=str(tiny_model_dir), port=0)):
        pass
    with open_db(home) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db["partial_answers"].count == 0
        stored = {row["id"]: row for row in db["messages"].rows_where("role = 'assistant'")}
        questions = db["messages"].count_where("role = 'user'")
    assert len(stored) == questions >= 2  # each question the server took has its answer
    assert set(received) <= set(stored)
    assert all(row["finish_reason"] == "interrupted" for row in stored.values())
    with_text = [i for i in received if stored[i]["content"]]
    assert len(with_text) >= 1
    for answer_id in with_text:  # what was kept is what the reader was shown (or its start)
        assert received[answer_id].rstrip().startswith(stored[answer_id]["content"])


@pytest.mark.slow
def test_a_corrupt_database_is_one_line_and_exit_code_2(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "flywheel.db").write_bytes(b"this is not a database" * 400)
    for command in (["serve"], ["users", "list"], ["export", "--format", "sft"]):
        done = subprocess.run([sys.executable, "-m", "flywheel.cli", *command, "--home",
                               str(home)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, (command, done.stderr)
        assert done.stderr.count("\n") == 1 and "file is not a database" in done.stderr
    assert sqlite3.connect(home / "flywheel.db")  # left as it was, for `flywheel restore`
    assert (home / "flywheel.db").read_bytes() == b"this is not a database" * 400



def test_a_full_disk_is_an_openai_shaped_error_and_nothing_half_written(home, tiny_model_dir):
    config = ServeConfig(model=str(tiny_model_dir), port=0)
    with serve_in_thread(home, config) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="local", max_retries=0)
        client.chat.completions.create(model="flywheel", max_tokens=2,
                                       messages=[{"role": "user", "content": "hi"}])
        with open_db(home) as db:
            before = (db["conversations"].count, db["messages"].count)
        # For a moment no file of this process may grow: what a full disk does to a writer.
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
        try:
            answer = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
                "model": "flywheel", "max_tokens": 2,
                "messages": [{"role": "user", "content": "x"}]})
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        assert answer.status_code in (503, 507), answer.text
        assert answer.json()["error"]["type"] == "server_error"
        assert "nothing was stored" in answer.json()["error"]["message"]
        client.chat.completions.create(model="flywheel", max_tokens=2,  # room again: it goes on
                                       messages=[{"role": "user", "content": "hi"}])
    with open_db(home) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        after = (db["conversations"].count, db["messages"].count)
    assert after == (before[0] + 1, before[1] + 2)  # only the request answered after it


@contextmanager
def small_disk(path, size="16m"):
    """A tmpfs of `size` mounted at `path`: a disk that really fills up. None where this
    process may not mount one (it needs root, as in CI's container)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = shutil.which("mount") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True).returncode == 0
    try:
        yield path if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_really_full_disk_is_a_507_and_nothing_half_written(tmp_path, tiny_model_dir):
    with small_disk(tmp_path / "disk") as disk:
        if disk is None:
            pytest.skip("cannot mount a small disk here; the RLIMIT_FSIZE test stands in")
        home = Home.resolve(disk / "home")
        init_db(home)
        with serve_in_thread(home, ServeConfig(model=str(tiny_model_dir), port=0)) as (url, _):
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="local", max_retries=0)
            ask = dict(model="flywheel", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
            client.chat.completions.create(**ask)
            with open_db(home) as db:
                before = (db["conversations"].count, db["messages"].count)
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the next write must grow a file
            with open(disk / "filler", "wb", buffering=0) as filler:
                with pytest.raises(OSError, match="No space left"):
                    while True:
                        filler.write(b"\0" * 65536)
            answer = httpx.post(f"{url}/v1/chat/completions", timeout=60, json=ask)
            assert answer.status_code == 507, answer.text
            assert answer.json()["error"]["type"] == "server_error"
            assert "disk is full; nothing was stored" in answer.json()["error"]["message"]
            (disk / "filler").unlink()
            client.chat.completions.create(**ask)  # room again: it goes on
            with open_db(home) as db:
                assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                after = (db["conversations"].count, db["messages"].count)
        assert after == (before[0] + 1, before[1] + 2)  # only the request answered after it


@pytest.mark.slow
def test_a_read_only_home_is_one_line_and_exit_code_2(tmp_path):
    home = tmp_path / "home"
    init_db(Home.resolve(home))
    files = sorted(p.name for p in home.iterdir())
    frozen = [home / "flywheel.db", home]  # immutable: not even root may write (chattr +i)
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", *map(str, frozen)],
                                                    capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available on this filesystem")
    try:
        for command in (["serve"], ["users", "add", "bob", "--role", "user"],
                        ["export", "--format", "sft"]):
            done = subprocess.run([sys.executable, "-m", "flywheel.cli", *command, "--home",
                                   str(home)], capture_output=True, text=True, timeout=120,
                                  stdin=subprocess.DEVNULL)
            assert done.returncode == 2, (command, done.stderr)
            assert done.stderr.count("\n") == 1 and "not permitted" in done.stderr, done.stderr
    finally:
        subprocess.run(["chattr", "-i", *map(str, frozen)], capture_output=True)
    assert sorted(p.name for p in home.iterdir()) == files  # nothing else written
