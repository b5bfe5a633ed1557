"""`flywheel train` (one cycle; settings from trainer/config.py) and `flywheel schedule`
(a cycle every night; its settings from ScheduleConfig in trainer/schedule.py)."""

import argparse

from flywheel.cli_common import UsageError, add_setting
from storage import Home
from trainer.config import TrainConfig
from trainer.schedule import ScheduleConfig, ScheduleError, run_schedule


def add_commands(sub: argparse._SubParsersAction, home: argparse.ArgumentParser) -> None:
    t = sub.add_parser("train", parents=[home],
                       help="one cycle: data, training, evaluation gate, publish, promote")
    t.add_argument("--model", help="base model spec; must match the server's")
    t.add_argument("--config", help="a TOML file of settings (see trainer/config.py)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one setting, e.g. dpo.beta=0.2 or gate.max_forgetting=0.1")
    t.add_argument("--method", help="auto (default), sft, dpo, kto or sft+dpo")
    t.add_argument("--start-from", help="base (default): a fresh adapter on all feedback; "
                                        "active: continue the active adapter on new feedback")
    t.add_argument("--promotion", help="auto (default): promote when the gate passes; manual: "
                                       "leave a passing adapter a candidate")
    t.add_argument("--no-promote", action="store_true", help="the same as --promotion manual")
    t.add_argument("--ab-share", type=float,
                   help="with manual promotion, send this share of new conversations to a "
                        "passing candidate")
    t.add_argument("--resume", action="store_true",
                   help="continue the interrupted run from its last checkpoint")
    t.add_argument("--min-examples", type=int,
                   help=f"SFT examples needed (default {TrainConfig.min_examples})")
    t.add_argument("--min-new-feedback", type=int,
                   help="skip unless this much feedback arrived since the last run")
    t.add_argument("--epochs", type=float, help="passes over the data, every method")
    t.add_argument("--max-steps", type=int, help="optimizer steps per stage (overrides epochs)")
    t.add_argument("--learning-rate", type=float, help="learning rate, every method")
    t.add_argument("--batch-size", type=int, help="examples per device per step, every method")
    t.add_argument("--validation-share", type=float,
                   help="share of conversations held out for validation (default "
                        f"{TrainConfig.validation_share})")
    t.add_argument("--replay-share", type=float,
                   help="earlier runs' examples mixed in, as a share of the new ones")
    t.add_argument("--anchor-share", type=float,
                   help="anchor-set examples mixed in (answers generated once per model)")
    t.add_argument("--quantize", choices=["4bit"], help="QLoRA: a 4-bit base (CUDA)")
    t.set_defaults(func=cmd_train)

    sc = sub.add_parser("schedule", parents=[home],
                        help="run a training cycle every night at a set time")
    for name in ("at", "min_new_feedback", "nice"):  # defaults and help from ScheduleConfig
        add_setting(sc, ScheduleConfig, name)
    sc.add_argument("--now", action="store_true", help="also run one cycle right away")
    add_setting(sc, ScheduleConfig, "keep_days")
    sc.add_argument("--model", help="base model spec, passed to flywheel train")
    sc.add_argument("--config", help="TOML settings, passed to flywheel train")
    sc.add_argument("--promotion", help="auto or manual, passed to flywheel train")
    sc.add_argument("--method", help="passed to flywheel train")
    sc.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="passed to flywheel train")
    sc.set_defaults(func=cmd_schedule)


def train_config(args: argparse.Namespace):
    """Defaults, then --config FILE.toml, then the named flags, then --set section.field=value."""
    from trainer.config import load, update
    flags = {"model": args.model, "method": args.method, "start_from": args.start_from,
             "promotion": "manual" if args.no_promote else args.promotion,
             "ab_share": args.ab_share, "min_examples": args.min_examples,
             "min_new_feedback": args.min_new_feedback, "validation_share": args.validation_share,
             "replay_share": args.replay_share, "anchor_share": args.anchor_share,
             "quantize": args.quantize}
    # These apply to every method's settings (the method is often picked from the data).
    shared = {"epochs": args.epochs, "max_steps": args.max_steps,
              "learning_rate": args.learning_rate, "batch_size": args.batch_size}
    flags.update({m: {k: v for k, v in shared.items() if v is not None}
                  for m in ("sft", "dpo", "kto")})
    try:
        config = load(args.config)
        config = update(config, {k: v for k, v in flags.items() if v is not None})
        return load(None, args.set, base=config)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cmd_train(args: argparse.Namespace) -> int:
    from assistant.models import ModelError
    from storage.lock import Busy
    from trainer.train import FeedbackRefused, NotEnoughData, NothingToResume, run_cycle
    config = train_config(args)
    try:
        run_cycle(Home.resolve(args.home), config, resume=args.resume)
    except NotEnoughData as exc:
        print(f"{exc}. Nothing changed.")
        return 0
    except FeedbackRefused as exc:  # like a gate's refusal: the cycle worked, the data did not
        print(f"Refused before training: {exc}. Nothing was trained; the server keeps what it "
              "serves.", flush=True)
        return 0
    except (ModelError, Busy, NothingToResume) as exc:
        raise UsageError(str(exc)) from None
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    try:
        run_schedule(Home.resolve(args.home), args.at, train_args=_schedule_train_args(args),
                     min_new_feedback=args.min_new_feedback, niceness=args.nice,
                     run_now=args.now, keep_days=args.keep_days)
    except ScheduleError as exc:
        raise UsageError(str(exc)) from None
    return 0


def _schedule_train_args(args: argparse.Namespace) -> list[str]:
    out = []
    for flag in ("model", "config", "promotion", "method"):
        if getattr(args, flag) is not None:
            out += [f"--{flag}", str(getattr(args, flag))]
    for item in args.set or []:
        out += ["--set", item]
    return out
