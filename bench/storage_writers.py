"""Concurrent feedback writes for bench/storage.py: writer threads beside the server's
checkpointer, counted and checked, and `flywheel backup` taken while they write."""

import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from storage import Home, open_db
from storage import chat as store
from storage.db import Checkpointer


def writers(home: Home, threads: int, seconds: float, answers: list[str],
            during=None) -> dict:
    """`threads` writers send feedback as fast as they can for `seconds`, each with its own
    connection, as the server's request threads do, beside the server's checkpointer. Counts
    acknowledged writes and errors, then checks every acknowledged rating is in the database.
    `during(acked)` runs in the middle (a backup), with the list of (rating id, time)
    acknowledged so far."""
    acked: list[tuple[int, float]] = []
    errors: list[str] = []
    stop = time.perf_counter() + seconds
    lock = threading.Lock()

    def work(n: int) -> None:
        rng = random.Random(n)
        with open_db(home) as db:
            while time.perf_counter() < stop:
                answer = rng.choice(answers)
                try:
                    ids = store.record_feedback(db, answer, rng.choice(["up", "down"]),
                                                reasons=["clear"], comment=f"w{n}")
                except Exception as exc:  # counted, not raised: the figure is the count
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                with lock:
                    acked.append((ids["rating_id"], time.perf_counter()))

    with open_db(home) as db:
        before = db.execute("SELECT COUNT(*) FROM ratings").fetchone()[0]
    checkpointer = Checkpointer(home).start()  # as `flywheel serve` runs one
    started = time.perf_counter()
    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    extra = None
    if during is not None:
        time.sleep(seconds / 3)  # a benchmark's schedule, not a test's wait
        extra = during(list(acked))
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - started
    checkpointer.stop()
    with open_db(home) as db:
        after = db.execute("SELECT COUNT(*) FROM ratings").fetchone()[0]
        ids = [i for i, _ in acked]
        present = sum(db.execute(
            f"SELECT COUNT(*) FROM ratings WHERE id IN ({', '.join('?' * len(ids[s:s + 500]))})",
            ids[s:s + 500]).fetchone()[0] for s in range(0, len(ids), 500))
    return {"writers": threads, "writes": len(acked),
            "writes_per_second": round(len(acked) / elapsed),
            "errors": len(errors), "first_error": errors[0] if errors else None,
            "lost": len(acked) - present, "rows_added": after - before, "during": extra}


def backup_during_writes(home: Home, answers: list[str], seconds: float) -> dict:
    """`flywheel backup` while 16 writers write; restored into a new home and checked."""
    target = Path(tempfile.mkdtemp(prefix="flywheel-backup-")) / "backup"
    restored = Home.resolve(tempfile.mkdtemp(prefix="flywheel-restored-"))

    def take(acked_before):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "flywheel.cli", "backup", "--home",
                               str(home.root), str(target)], capture_output=True, text=True)
        return {"acked_before_backup": acked_before, "backup_seconds":
                round(time.perf_counter() - started, 1), "exit": done.returncode,
                "output": (done.stdout + done.stderr).strip()[-400:]}

    result = writers(home, 16, seconds, answers, during=take)
    info = result.pop("during")
    done = subprocess.run([sys.executable, "-m", "flywheel.cli", "restore", "--home",
                           str(restored.root), str(target)], capture_output=True, text=True)
    acked_ids = [i for i, _ in info.pop("acked_before_backup")]
    with open_db(restored) as db:
        present = set()
        for s in range(0, len(acked_ids), 500):
            chunk = acked_ids[s:s + 500]
            present |= {r[0] for r in db.execute(
                f"SELECT id FROM ratings WHERE id IN ({', '.join('?' * len(chunk))})", chunk)}
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    return {**info, "writes_during": result, "restore_exit": done.returncode,
            "restore_output": (done.stdout + done.stderr).strip()[-400:],
            "acknowledged_before_backup": len(acked_ids),
            "found_after_restore": len(present & set(acked_ids)), "integrity": integrity}
