"""`flywheel schedule`: a training cycle every night at a set local time.

APScheduler's cron trigger fires the job; each night it counts the feedback (ratings,
corrections, side-by-side picks) that arrived since the last run, skips the night when too
little did, and otherwise runs `flywheel train` in its own process at a lower CPU and I/O
priority, so a server on the same machine keeps answering first. Every decision is logged to
standard output and to FLYWHEEL_HOME/schedule.log; each run's output goes to
FLYWHEEL_HOME/runs/nightly-<time>.log.

The same nightly job without a resident process, for cron or a systemd timer, is
`flywheel train --min-new-feedback N` (README.md shows both).
"""

import logging
import sys
from dataclasses import dataclass
from datetime import datetime

from assistant.config import setting
from assistant.training_process import start_training
from storage import Home, init_db, open_db, runs
from storage import chat as store

log = logging.getLogger("flywheel.schedule")


class ScheduleError(Exception):
    pass


@dataclass
class ScheduleConfig:
    """`flywheel schedule`'s settings: each default and help line here, and nowhere else."""
    at: str = setting("02:00", "local time HH:MM[:SS] (default {default})")
    min_new_feedback: int = setting(
        20, "skip the night with less new feedback than this (default {default})")
    nice: int = setting(
        10, "CPU niceness of the training process (default {default}: below the server)")
    keep_days: float | None = setting(
        None, "each night, first prune conversations older than this (flywheel prune)")


def parse_time(text: str) -> tuple[int, int, int]:
    """'HH:MM' or 'HH:MM:SS' -> (hour, minute, second)."""
    try:
        parts = [int(p) for p in text.split(":")]
        hour, minute, second = (parts + [0])[:3] if len(parts) in (2, 3) else (None,) * 3
        datetime(2000, 1, 1, hour, minute, second)
    except (TypeError, ValueError):
        raise ScheduleError(f"--at takes a local time HH:MM or HH:MM:SS, not {text!r}") from None
    return hour, minute, second


def new_feedback(home: Home) -> tuple[int, str | None]:
    """(feedback since the newest run that did not fail, that run's id)."""
    with open_db(home) as db:
        last = runs.last_started(db)
        return store.feedback_since(db, last["started_at"] if last else None), (
            last["id"] if last else None)


def nightly(home: Home, train_args: list[str], min_new_feedback: int, niceness: int,
            keep_days: float | None = None) -> str:
    """Tonight's decision: skip, or train (and how it ended). Returns the logged line.
    With `keep_days`, conversations older than that are pruned first (storage/retention.py)."""
    if keep_days is not None:
        from storage.retention import prune
        with open_db(home) as db:
            gone = prune(db, home, keep_days)
        log.info("prune: kept the last %g days; removed %s", keep_days,
                 ", ".join(f"{n} {what}" for what, n in gone.items() if n) or "nothing")
    count, since = new_feedback(home)
    if count < min_new_feedback:
        line = (f"skip: {count} new feedback since {since or 'the start'}, "
                f"need {min_new_feedback}")
        log.info(line)
        return line
    log_path = home.runs_dir / f"nightly-{datetime.now():%Y%m%d-%H%M%S}.log"
    log.info("train: %d new feedback since %s; running flywheel train %s (nice %d), output "
             "in %s", count, since or "the start", " ".join(train_args), niceness, log_path)
    code = start_training(home, train_args, log_path, niceness=niceness).wait()
    lines = [x for x in log_path.read_text(errors="replace").splitlines() if x.strip()]
    line = f"train finished with exit {code}: {lines[-1] if lines else '(no output)'}"
    (log.info if code == 0 else log.error)(line)
    return line


def _setup_logging(home: Home) -> None:
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    for handler in (logging.StreamHandler(sys.stdout),
                    logging.FileHandler(home.root / "schedule.log")):
        handler.setFormatter(formatter)
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def run_schedule(home: Home, at: str, train_args: list[str],
                 min_new_feedback: int = ScheduleConfig.min_new_feedback,
                 niceness: int = ScheduleConfig.nice, run_now: bool = False,
                 keep_days: float | None = ScheduleConfig.keep_days) -> None:
    """Block, running `nightly` at `at` (local time) every day."""
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.cron import CronTrigger

    hour, minute, second = parse_time(at)
    init_db(home)
    _setup_logging(home)
    trigger = CronTrigger(hour=hour, minute=minute, second=second)
    scheduler = BlockingScheduler()
    scheduler.add_job(nightly, trigger, args=[home, train_args, min_new_feedback, niceness,
                                              keep_days],
                      id="nightly", max_instances=1, coalesce=True, misfire_grace_time=3600)
    if run_now:
        nightly(home, train_args, min_new_feedback, niceness, keep_days)
    upcoming = trigger.get_next_fire_time(None, datetime.now(trigger.timezone))
    log.info("scheduled: a training cycle every day at %02d:%02d:%02d (next %s); nights with "
             "fewer than %d new feedback are skipped", hour, minute, second,
             upcoming.isoformat(timespec="seconds"), min_new_feedback)
    try:
        scheduler.start()  # blocks
    except (KeyboardInterrupt, SystemExit):
        log.info("stopped")
