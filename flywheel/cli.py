"""`flywheel serve | train | schedule | adapters ...`: parses arguments and hands off to the
part that does the work. Heavy imports happen inside each command so `--help` stays fast.

Bad input ends with one line on stderr and exit code 2; nothing is half-written.
"""

import argparse
import dataclasses
import json
import sqlite3
import sys
from contextlib import contextmanager
from typing import Iterator, get_args

import sqlite_utils

from assistant.config import ServeConfig, help_of, literal_choices
from storage import Home, adapters, init_db, open_db, write_atomic
from trainer.config import TrainConfig

# The ServeConfig fields that `flywheel serve` takes as flags of their own (--max-batch-size
# ...); every other field, the limits among them, through --limit NAME=VALUE.
SERVE_FLAGS = ("model", "host", "port", "poll_interval", "max_batch_size", "max_tokens_cap",
               "quantize", "engine", "vllm_url", "vllm_python", "vllm_dtype", "vllm_args")


class UsageError(Exception):
    """Reported as one line, exit code 2."""


@contextmanager
def _database(args: argparse.Namespace) -> Iterator[sqlite_utils.Database]:
    """The database under `--home`, created or migrated first."""
    home = Home.resolve(args.home)
    init_db(home)
    with open_db(home) as db:
        yield db


def cmd_serve(args: argparse.Namespace) -> int:
    from assistant.models import ModelError
    from assistant.server import ServeError, serve
    config = ServeConfig(**{name: getattr(args, name) for name in SERVE_FLAGS})
    try:
        config = with_limits(config, args.limit or []).validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        serve(Home.resolve(args.home), config)
    except (ModelError, ServeError) as exc:
        raise UsageError(str(exc)) from None
    return 0


def with_limits(config, pairs: list[str]):
    """`--limit NAME=VALUE`: a field of ServeConfig or of its ThrottleConfig, typed as there."""
    import dataclasses
    throttle = config.throttle
    for pair in pairs:
        name, sep, value = pair.partition("=")
        target = next((t for t in (config, throttle) if name in
                       {f.name for f in dataclasses.fields(t)} and name != "throttle"), None)
        if not sep or target is None:
            raise ValueError(f"--limit takes NAME=VALUE with NAME a field of ServeConfig or "
                             f"ThrottleConfig (assistant/config.py), not {pair!r}")
        current = getattr(target, name)
        try:
            typed = (tuple(v.strip() for v in value.split(",") if v.strip())
                     if isinstance(current, tuple) else type(current)(value)
                     if current is not None else value)
        except ValueError:
            kind = {"int": "an integer", "float": "a number"}.get(type(current).__name__,
                                                                 type(current).__name__)
            raise ValueError(f"--limit {name} takes {kind}, not {value!r}") from None
        if target is throttle:
            throttle = dataclasses.replace(throttle, **{name: typed})
        else:
            config = dataclasses.replace(config, **{name: typed})
    return dataclasses.replace(config, throttle=throttle)


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
    from trainer.train import NotEnoughData, NothingToResume, run_cycle
    config = train_config(args)
    try:
        run_cycle(Home.resolve(args.home), config, resume=args.resume)
    except NotEnoughData as exc:
        print(f"{exc}. Nothing changed.")
        return 0
    except (ModelError, Busy, NothingToResume) as exc:
        raise UsageError(str(exc)) from None
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from trainer.schedule import ScheduleError, run_schedule
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


def cmd_adapters(args: argparse.Namespace) -> int:
    with _database(args) as db:
        if args.action == "list":
            rows = adapters.list_adapters(db)
            served = adapters.latest_events(db)  # what a server last did with each
            if args.json:
                print(json.dumps([{**row, "server": served.get(row["id"])} for row in rows],
                                 indent=2))
            else:
                for row in rows:
                    gate = row["metrics"].get("gate")
                    verdict = f"gate {gate['verdict']}" if gate else "no gate"
                    event = served.get(row["id"])
                    server = (f"  {event['event']} by the server"
                              + (f": {event['detail'][:80]}" if event["detail"] else "")
                              if event else "")
                    print(f"{row['id']}  {row['status']:<9}  {row['method']:<7}  {verdict:<9}  "
                          f"{row['base_model']}  {row['created_at']}{server}")
                if not rows:
                    print("no adapters yet")
        elif args.action == "promote":
            try:
                row = adapters.promote(db, args.id, reason="flywheel adapters promote",
                                       force=args.force)
            except KeyError as exc:
                raise UsageError(exc.args[0]) from None
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            print(f"{row['id']} is now active")
        elif args.action == "rollback":
            try:
                row = adapters.rollback(db, reason="flywheel adapters rollback")
            except LookupError as exc:
                raise UsageError(exc.args[0]) from None
            print(f"{row['id'] if row else 'the base model'} is now active")
        elif args.action == "ab":
            cmd_ab(db, args)
    return 0


def cmd_ab(db, args: argparse.Namespace) -> None:
    """Start, stop or report the A/B split of new conversations."""
    from storage import ab
    if args.stop:
        ended = ab.stop(db, reason="stopped with flywheel adapters ab --stop")
        print(f"A/B split for {ended['candidate_id']} stopped" if ended else "no A/B split runs")
        return
    if args.id:
        try:
            test = ab.start(db, args.id, args.share, reason="flywheel adapters ab")
        except KeyError as exc:
            raise UsageError(exc.args[0]) from None
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        print(f"{test['share']:.0%} of new conversations now go to {test['candidate_id']}")
        return
    report = ab.report(db)
    if report is None:
        print("no A/B split runs")
        return
    for arm in ("candidate", "control"):
        a = report[arm]
        rate = "n/a" if a["up_rate"] is None else f"{a['up_rate']:.0%}"
        if a["interval"]:
            rate += f" (95% {a['interval'][0]:.0%}-{a['interval'][1]:.0%})"
        print(f"{arm:<9}  {a['adapter']}  answers {a['answers']}  up {a['up']}  "
              f"down {a['down']}  up rate {rate}")
    print(ab.verdict(report))


def cmd_keys(args: argparse.Namespace) -> int:
    from storage import users
    with _database(args) as db:
        if args.action == "create":
            try:
                key, user = users.create_key(db, args.user, role=args.role)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            print(f"API key for {user['name']} ({user['role']}); shown once, store it now:",
                  file=sys.stderr)
            print(key)
        elif args.action == "list":
            rows = users.list_keys(db)
            for row in rows:
                state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "live"
                print(f"{row['id']}  {row['user']}  {row['role']}  {row['created_at']}  {state}")
            if not rows:
                print("no API keys yet")
        elif args.action == "revoke":
            try:
                users.revoke_key(db, args.id)
            except KeyError as exc:
                raise UsageError(exc.args[0]) from None
            print(f"key {args.id} revoked")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a dataset as JSONL: the pipeline streams into a temporary folder, then the rows
    stream into a temporary file, renamed into place when complete."""
    import tempfile
    import time
    from pathlib import Path

    from storage.embeddings import EmbeddingCache
    from trainer.dataset import (
        MINILM,
        DataConfig,
        build_to,
        default_embedder,
        token_counter,
        write_rows,
    )
    home = Home.resolve(args.home)
    init_db(home)
    fmt = "sft" if args.format == "openai" else args.format
    count_tokens = None
    if args.model is not None or not args.no_length_check:
        from assistant import models
        try:
            count_tokens = token_counter(models.resolve(args.model, home).folder)
        except models.ModelError as exc:
            raise UsageError(str(exc)) from None
    started = time.perf_counter()
    config = DataConfig(max_length=args.max_length, validation_share=args.validation_share,
                        near_duplicate_threshold=args.threshold,
                        deduplicate=not args.no_dedup)
    sides = ["train", "validation"] if args.split == "all" else [args.split]
    cache = EmbeddingCache.for_home(home, MINILM) if config.deduplicate else None
    try:
        with tempfile.TemporaryDirectory(prefix=".export-", dir=home.root) as tmp, \
                open_db(home) as db:
            manifest = build_to(db, Path(tmp), config, count_tokens=count_tokens,
                                embed=default_embedder(cache) if cache else None,
                                formats=[fmt], progress=True)
            built = time.perf_counter()
            sources = [Path(tmp) / f"{fmt}-{side}.jsonl" for side in sides]
            if args.out:
                out = Path(args.out)
                partial = out.with_name(f".{out.name}.partial")
                with open(partial, "w") as f:
                    rows = write_rows(sources, args.format, f)
                partial.replace(out)
            else:
                rows = write_rows(sources, args.format, sys.stdout)
    finally:
        if cache:
            cache.close()
    done = time.perf_counter()
    manifest["seconds"] = round(done - started, 2)
    manifest["write_rows_per_second"] = round(rows / max(done - built, 1e-9))
    if args.report:
        write_atomic(Path(args.report), json.dumps(manifest, indent=1))
    summary = {k: {s: v[s] for s in ("train", "validation", "sources")}
               for k, v in manifest["formats"].items()}
    print(f"{rows} {args.format} examples written ({args.split}); formats: "
          f"{json.dumps(summary)}; dropped: {json.dumps(manifest['dropped'])}; scrubbed: "
          f"{json.dumps(manifest['scrubbed'])}; {manifest['seconds']}s", file=sys.stderr)
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from storage.backup import BackupError, backup
    home = Home.resolve(args.home)
    try:
        manifest = backup(home, args.dir)
    except BackupError as exc:
        raise UsageError(str(exc)) from None
    rows = ", ".join(f"{n} {table}" for table, n in manifest["rows"].items())
    copied = len(manifest["adapters"]) - len(manifest["missing_adapters"])
    print(f"backed up {home.root} to {args.dir}: {rows}; {copied} adapter folders; "
          f"{len(manifest['files'])} files with SHA-256 in manifest.json")
    if manifest["missing_adapters"]:
        print(f"warning: registered adapters without a folder: {manifest['missing_adapters']}",
              file=sys.stderr)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from storage.backup import BackupError, restore
    home = Home.resolve(args.home)
    try:
        manifest = restore(home, args.dir, force=args.force)
    except BackupError as exc:
        raise UsageError(str(exc)) from None
    init_db(home)  # a backup from an older Flywheel is migrated now
    rows = ", ".join(f"{n} {table}" for table, n in manifest["rows"].items())
    print(f"restored {args.dir} (taken {manifest['created_at']}) into {home.root}: {rows}; "
          f"every file matched its SHA-256")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from storage.retention import prune
    home = Home.resolve(args.home)
    init_db(home)
    with open_db(home) as db:
        try:
            gone = prune(db, home, args.keep_days)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    parts = [f"{n} {what}" for what, n in gone.items() if n]
    print(f"kept the last {args.keep_days:g} days; removed "
          f"{', '.join(parts) if parts else 'nothing'}")
    return 0


def _password(args: argparse.Namespace) -> str:
    """From standard input with --password-stdin (scripts), else asked twice at a prompt."""
    import getpass
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"Password for {args.name}: ")
    if getpass.getpass("Again: ") != first:
        raise UsageError("the passwords differ")
    return first


def cmd_users(args: argparse.Namespace) -> int:
    from storage import users
    with _database(args) as db:
        try:
            if args.action == "add":
                user = users.add_user(db, args.name, args.role, password=_password(args))
                print(f"added {user['name']} ({user['role']})")
            elif args.action == "list":
                from storage import paging
                for u in paging.every(lambda after: users.list_users(db, after=after)):
                    state = "disabled" if u["disabled"] else "active"
                    print(f"{u['name']}  {u['role']}  {state}  {u['created_at']}")
            elif args.action == "passwd":
                users.set_password(db, args.name, _password(args))
                print(f"new password set for {args.name}")
            elif args.action in ("disable", "enable"):
                users.set_disabled(db, args.name, args.action == "disable")
                print(f"{args.name} is {args.action}d")
        except (KeyError, ValueError) as exc:
            raise UsageError(exc.args[0]) from None
    return 0


def parser() -> argparse.ArgumentParser:
    home = argparse.ArgumentParser(add_help=False)
    home.add_argument("--home", help="data folder (default: $FLYWHEEL_HOME, else ./flywheel-data)")
    p = argparse.ArgumentParser(prog="flywheel", description="A self-improving chat assistant.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", parents=[home], help="serve the chat page and the API")
    for name in SERVE_FLAGS:  # defaults, help and choices from ServeConfig
        f = next(f for f in dataclasses.fields(ServeConfig) if f.name == name)
        kind = next((t for t in (int, float) if t in (f.type, *get_args(f.type))), str)
        s.add_argument(f"--{name.replace('_', '-')}", type=kind, default=f.default,
                       choices=literal_choices(f.type) or None, help=help_of(f))
    s.add_argument("--limit", action="append", metavar="NAME=VALUE",
                   help="change one limit, e.g. requests_per_minute=60 or max_body_bytes=2000000 "
                        "(README: Limits)")
    s.set_defaults(func=cmd_serve)

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
    sc.add_argument("--at", default="02:00", help="local time HH:MM[:SS] (default 02:00)")
    sc.add_argument("--min-new-feedback", type=int, default=20,
                    help="skip the night with less new feedback than this (default 20)")
    sc.add_argument("--nice", type=int, default=10,
                    help="CPU niceness of the training process (default 10: below the server)")
    sc.add_argument("--now", action="store_true", help="also run one cycle right away")
    sc.add_argument("--keep-days", type=float,
                    help="each night, first prune conversations older than this (flywheel prune)")
    sc.add_argument("--model", help="base model spec, passed to flywheel train")
    sc.add_argument("--config", help="TOML settings, passed to flywheel train")
    sc.add_argument("--promotion", help="auto or manual, passed to flywheel train")
    sc.add_argument("--method", help="passed to flywheel train")
    sc.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="passed to flywheel train")
    sc.set_defaults(func=cmd_schedule)

    a = sub.add_parser("adapters", help="list, promote or roll back adapters")
    asub = a.add_subparsers(dest="action", required=True)
    lst = asub.add_parser("list", parents=[home])
    lst.add_argument("--json", action="store_true")
    pro = asub.add_parser("promote", parents=[home])
    pro.add_argument("id")
    pro.add_argument("--force", action="store_true",
                     help="promote even an adapter the evaluation gate rejected")
    asub.add_parser("rollback", parents=[home])
    abp = asub.add_parser("ab", parents=[home],
                          help="A/B split: ID --share S starts one, --stop ends it, "
                               "no arguments reports thumbs-up rates")
    abp.add_argument("id", nargs="?", help="the candidate adapter to send conversations to")
    abp.add_argument("--share", type=float, default=0.2,
                     help="share of new conversations for the candidate (default 0.2)")
    abp.add_argument("--stop", action="store_true", help="end the running split")
    a.set_defaults(func=cmd_adapters)

    k = sub.add_parser("keys", help="API keys: create (shown once), list, revoke")
    ksub = k.add_subparsers(dest="action", required=True)
    kc = ksub.add_parser("create", parents=[home], help="a new key for USER (created if missing)")
    kc.add_argument("user")
    kc.add_argument("--role", default="user", choices=["user", "curator", "admin"],
                    help="role for a user created now")
    ksub.add_parser("list", parents=[home])
    kr = ksub.add_parser("revoke", parents=[home])
    kr.add_argument("id", type=int)
    k.set_defaults(func=cmd_keys)

    u = sub.add_parser("users", help="accounts for the page: add, list, passwd, disable, enable")
    usub = u.add_subparsers(dest="action", required=True)
    ua = usub.add_parser("add", parents=[home])
    ua.add_argument("name")
    ua.add_argument("--role", default="user", choices=["user", "curator", "admin"])
    usub.add_parser("list", parents=[home])
    up = usub.add_parser("passwd", parents=[home])
    up.add_argument("name")
    for action in ("disable", "enable"):
        usub.add_parser(action, parents=[home]).add_argument("name")
    for sp in (ua, up):
        sp.add_argument("--password-stdin", action="store_true",
                        help="read the password from standard input")
    u.set_defaults(func=cmd_users)

    e = sub.add_parser("export", parents=[home], help="write a training dataset as JSONL")
    e.add_argument("--format", required=True, choices=["sft", "dpo", "kto", "openai"])
    e.add_argument("--out", help="file to write (default: standard output)")
    e.add_argument("--split", default="all", choices=["train", "validation", "all"])
    e.add_argument("--model", help="base model whose tokenizer measures length (default: embedded)")
    e.add_argument("--no-length-check", action="store_true",
                   help="skip fitting examples to the context (no tokenizer needed)")
    e.add_argument("--max-length", type=int, default=TrainConfig.max_length,
                   help="tokens per example")
    e.add_argument("--validation-share", type=float, default=TrainConfig.validation_share)
    e.add_argument("--threshold", type=float, default=TrainConfig.near_duplicate_threshold,
                   help="cosine similarity at which examples are near duplicates")
    e.add_argument("--no-dedup", action="store_true",
                   help="keep exact and near duplicates (no embeddings needed)")
    e.add_argument("--report", help="also write the manifest (counts, drops, scrubs) as JSON")
    e.set_defaults(func=cmd_export)

    from storage.retention import DEFAULT_KEEP_DAYS
    b = sub.add_parser("backup", parents=[home],
                       help="a consistent copy of the database and adapters (safe while serving)")
    b.add_argument("dir", help="a new folder to write the backup into")
    b.set_defaults(func=cmd_backup)
    r = sub.add_parser("restore", parents=[home], help="make --home the backup in DIR")
    r.add_argument("dir", help="a folder written by flywheel backup")
    r.add_argument("--force", action="store_true",
                   help="replace the database already in --home (stop its server first)")
    r.set_defaults(func=cmd_restore)
    pr = sub.add_parser("prune", parents=[home],
                        help="delete conversations older than --keep-days, and their feedback")
    pr.add_argument("--keep-days", type=float, default=DEFAULT_KEEP_DAYS,
                    help=f"keep conversations active in the last N days "
                         f"(default {DEFAULT_KEEP_DAYS})")
    pr.set_defaults(func=cmd_prune)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"flywheel: error: {exc}", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as exc:  # corrupt, unreadable, read-only or full
        print(f"flywheel: error: the database cannot be used: {exc} (restore a backup with "
              "`flywheel restore DIR`, or check the home's permissions and free space)",
              file=sys.stderr)
        return 2
    except OSError as exc:  # a read-only or full home, a missing file
        print(f"flywheel: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
