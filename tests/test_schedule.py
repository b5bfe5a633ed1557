"""`flywheel schedule`: each night it skips when too little feedback arrived and otherwise
trains in its own, lower-priority process; the loop fires at the set time and logs why."""

import datetime
import re
import subprocess
import sys
import threading
import time

import psutil
import pytest

from flywheel.cli import main
from storage import adapters, open_db, runs
from tests.conftest import add_answers
from trainer.schedule import nightly

QUICK = ["--set", "validation_share=0", "--set", "anchor_share=0", "--set", "min_examples=4",
         "--set", "sft.max_steps=2", "--set", "gate.anchor_examples=4",
         "--set", "gate.generation_prompts=2", "--set", "gate.max_new_tokens=8",
         "--set", "gate.max_unreadable_feedback=1"]  # random weights: every text unreadable


@pytest.mark.slow
def test_a_night_skips_without_new_feedback_and_trains_at_low_priority_with_it(
        home, tiny_model_dir):
    train_args = ["--model", str(tiny_model_dir), *QUICK]
    assert nightly(home, train_args, 5, 10) == "skip: 0 new feedback since the start, need 5"
    add_answers(home, 6)
    decision, niceness = [], set()
    night = threading.Thread(target=lambda: decision.append(nightly(home, train_args, 5, 10)))
    night.start()
    while night.is_alive():
        for child in psutil.Process().children(recursive=True):
            try:
                if "train" in child.cmdline():
                    niceness.add(child.nice())
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.1)
    assert niceness == {psutil.Process().nice() + 10}
    assert decision[0].startswith("train finished with exit 0: Adapter ad-")
    with open_db(home) as db:
        [run] = runs.list_runs(db)
        assert adapters.active(db)["id"] == run["adapter_id"]
    later = nightly(home, train_args, 5, 10)
    assert later == f"skip: 0 new feedback since {run['id']}, need 5"
    assert nightly(home, train_args, 5, 10, keep_days=0).startswith("skip")  # pruned first
    with open_db(home) as db:
        assert db["conversations"].count == 0 and db["judgements"].count == 0


def _wait_for_line(path, text, proc, out, seconds):
    """The first line of `path` holding `text`, once the scheduler has written it; fails
    (with the process's output) if the process ends first or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        found = [line for line in lines if text in line]
        if found:
            return found[0]
        assert proc.poll() is None, out.read_text()
        assert time.monotonic() < deadline, f"no {text!r} in {seconds} s: {out.read_text()}"
        time.sleep(0.2)


@pytest.mark.slow
def test_the_schedule_fires_at_the_set_time_and_logs_its_decision(home):
    log, out = home.root / "schedule.log", home.root / "schedule.out"
    # A process that starts after the set time has passed waits for tomorrow: on a slow,
    # busy machine a near time can be missed, so a later one is tried before giving up.
    for margin in (5, 30, 90):
        log.unlink(missing_ok=True)
        at_time = datetime.datetime.now() + datetime.timedelta(seconds=margin)
        at = at_time.strftime("%H:%M:%S")
        with open(out, "w") as sink:  # a file, never a pipe: reading one could block
            proc = subprocess.Popen([sys.executable, "-m", "flywheel.cli", "schedule",
                                     "--home", str(home.root), "--at", at,
                                     "--min-new-feedback", "3"],
                                    stdout=sink, stderr=subprocess.STDOUT)
        try:
            scheduled = _wait_for_line(log, "scheduled:", proc, out, 120)
            upcoming = datetime.datetime.fromisoformat(
                re.search(r"\(next (\S+)\)", scheduled)[1]).replace(tzinfo=None)
            if upcoming - at_time > datetime.timedelta(minutes=1):
                continue  # started too late for today's time: it waits for tomorrow
            decided = _wait_for_line(log, "skip:", proc, out, margin + 60)
            break
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    else:
        raise AssertionError("the scheduler never started in time for a time 90 s ahead")
    assert f"every day at {at}" in scheduled and "fewer than 3 new feedback" in scheduled
    assert decided.endswith("skip: 0 new feedback since the start, need 3")


def test_a_bad_time_is_one_line_and_exit_2(home, capsys):
    assert main(["schedule", "--home", str(home.root), "--at", "25:00"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["flywheel: error: --at takes a local time HH:MM or HH:MM:SS, not '25:00'"]
