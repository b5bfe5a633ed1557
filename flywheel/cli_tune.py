"""`flywheel tune`: a hyperparameter search over real training runs (trainer/tune.py); its
settings come from TuneConfig there. The best settings go to a TOML file that `flywheel train
--config` and `flywheel schedule --config` read."""

import argparse
import sys

from flywheel.cli_common import UsageError, add_setting
from storage import Home
from trainer.tune import TuneConfig


def add_commands(sub: argparse._SubParsersAction, home: argparse.ArgumentParser) -> None:
    t = sub.add_parser("tune", parents=[home],
                       help="search training settings over real runs; write the best as TOML")
    for name in ("trials", "timeout", "max_epochs", "out", "plot", "seed"):
        add_setting(t, TuneConfig, name)
    t.add_argument("--model", help="base model spec; must match the server's")
    t.add_argument("--config", help="TOML settings every trial starts from")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one setting for every trial, e.g. gate.max_forgetting=0.1")
    t.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from rich.console import Console

    from storage.backup import BackupError
    from trainer.config import load, update
    from trainer.tune import plot, search, trial_table, write_best
    if args.trials < 1 or args.max_epochs < 1 or (args.timeout is not None
                                                  and args.timeout <= 0):
        raise UsageError("--trials and --max-epochs must be at least 1 and --timeout above 0")
    try:
        base = load(args.config, args.set)
        if args.model:
            base = update(base, {"model": args.model}).validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    config = TuneConfig(trials=args.trials, timeout=args.timeout, max_epochs=args.max_epochs,
                        out=args.out, plot=args.plot, seed=args.seed)
    from trainer.train import FeedbackRefused
    try:
        study, rows = search(Home.resolve(args.home), base, config)
    except BackupError as exc:  # nothing to copy: no database yet
        raise UsageError(str(exc)) from None
    except FeedbackRefused as exc:  # every trial reads the same feedback: none can train
        raise UsageError(f"the feedback is refused before training: {exc}") from None
    # Piped to a log, rich would squeeze the table into 80 columns, one letter per cell.
    Console(width=None if sys.stdout.isatty() else 200).print(trial_table(rows))
    if not any(row.get("outcome") == "scored" for row in rows):
        untrainable = all(str(row.get("outcome")).startswith("not enough data") for row in rows)
        print("No method the data allows could train; nothing written." if untrainable and rows
              else "No trial finished within the limits; nothing written.")
        return 1
    best = study.best_trial
    print(f"Best: trial {best.number}, score {best.value:.4f}. "
          f"Settings: {write_best(study, args.out)} (flywheel train --config {args.out}); "
          f"plot: {plot(study, args.plot)}")
    verdict = next((row.get("verdict") for row in rows if row.get("trial") == best.number), None)
    if verdict == "fail":
        print(f"No trial passed the gate: trial {best.number} was refused too (see its verdict "
              "above); a nightly run with these settings would be refused the same way.")
    return 0
