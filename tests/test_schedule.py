"""`flywheel schedule`: each night it skips when too little feedback arrived and otherwise
trains in its own, lower-priority process; the loop fires at the set time and logs why."""

import datetime
import subprocess
import sys
import threading
import time

import psutil

from flywheel.cli import main
from storage import adapters, open_db, runs
from tests.test_train import add_answers
from trainer.schedule import nightly

QUICK = ["--set", "validation_share=0", "--set", "anchor_share=0", "--set", "min_examples=4",
         "--set", "sft.max_steps=2", "--set", "gate.anchor_examples=4",
         "--set", "gate.generation_prompts=2", "--set", "gate.max_new_tokens=8",
         "--set", "gate.max_unreadable_feedback=1"]  # random weights: every text unreadable


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


def test_the_schedule_fires_at_the_set_time_and_logs_its_decision(home):
    at = (datetime.datetime.now() + datetime.timedelta(seconds=4)).strftime("%H:%M:%S")
    proc = subprocess.Popen([sys.executable, "-m", "flywheel.cli", "schedule", "--home",
                             str(home.root), "--at", at, "--min-new-feedback", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = home.root / "schedule.log"
    try:
        deadline = time.monotonic() + 60
        while "skip:" not in (log.read_text() if log.exists() else ""):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lines = log.read_text().splitlines()
    assert f"every day at {at}" in lines[0] and "fewer than 3 new feedback" in lines[0]
    assert lines[1].endswith("skip: 0 new feedback since the start, need 3")


def test_a_bad_time_is_one_line_and_exit_2(home, capsys):
    assert main(["schedule", "--home", str(home.root), "--at", "25:00"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["flywheel: error: --at takes a local time HH:MM or HH:MM:SS, not '25:00'"]
