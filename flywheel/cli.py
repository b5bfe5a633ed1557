"""`flywheel serve | train | adapters ...`: parses arguments and hands off to the part that
does the work. Heavy imports happen inside each command so `--help` stays fast.

Bad input ends with one line on stderr and exit code 2; nothing is half-written.
"""

import argparse
import json
import sys

from storage import Home, init_db, open_db
from storage import adapters


class UsageError(Exception):
    """Reported as one line, exit code 2."""


def cmd_serve(args: argparse.Namespace) -> int:
    from assistant.models import ModelError
    from assistant.server import serve
    try:
        serve(args.model, Home.resolve(args.home), host=args.host, port=args.port,
              poll_interval=args.poll_interval)
    except ModelError as exc:
        raise UsageError(str(exc)) from None
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from assistant.models import ModelError
    from trainer.train import NotEnoughData, TrainConfig, run_cycle
    config = TrainConfig(model=args.model, min_examples=args.min_examples, epochs=args.epochs,
                         max_steps=args.max_steps, learning_rate=args.learning_rate,
                         batch_size=args.batch_size, promote=not args.no_promote)
    try:
        run_cycle(Home.resolve(args.home), config)
    except NotEnoughData as exc:
        print(f"{exc}. Nothing changed.")
        return 0
    except ModelError as exc:
        raise UsageError(str(exc)) from None
    return 0


def cmd_adapters(args: argparse.Namespace) -> int:
    home = Home.resolve(args.home)
    init_db(home)
    with open_db(home) as db:
        if args.action == "list":
            rows = adapters.list_adapters(db)
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                for row in rows:
                    print(f"{row['id']}  {row['status']:<9}  {row['method']}  {row['base_model']}  "
                          f"{row['created_at']}")
                if not rows:
                    print("no adapters yet")
        elif args.action == "promote":
            try:
                row = adapters.promote(db, args.id, reason="flywheel adapters promote")
            except KeyError as exc:
                raise UsageError(exc.args[0]) from None
            print(f"{row['id']} is now active")
        elif args.action == "rollback":
            try:
                row = adapters.rollback(db, reason="flywheel adapters rollback")
            except LookupError as exc:
                raise UsageError(exc.args[0]) from None
            print(f"{row['id'] if row else 'the base model'} is now active")
    return 0


def parser() -> argparse.ArgumentParser:
    home = argparse.ArgumentParser(add_help=False)
    home.add_argument("--home", help="data folder (default: $FLYWHEEL_HOME, else ./flywheel-data)")
    p = argparse.ArgumentParser(prog="flywheel", description="A self-improving chat assistant.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", parents=[home], help="serve the chat page and the API")
    s.add_argument("--model", help="Hub id, local folder or .gguf file (default: embedded SmolLM2)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--poll-interval", type=float, default=2.0,
                   help="seconds between checks for a newly promoted adapter")
    s.set_defaults(func=cmd_serve)

    t = sub.add_parser("train", parents=[home], help="train, publish and promote one adapter")
    t.add_argument("--model", help="base model spec; must match the server's")
    t.add_argument("--min-examples", type=int, default=20)
    t.add_argument("--epochs", type=float, default=3.0)
    t.add_argument("--max-steps", type=int, default=-1)
    t.add_argument("--learning-rate", type=float, default=2e-4)
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--no-promote", action="store_true", help="leave the new adapter a candidate")
    t.set_defaults(func=cmd_train)

    a = sub.add_parser("adapters", help="list, promote or roll back adapters")
    asub = a.add_subparsers(dest="action", required=True)
    lst = asub.add_parser("list", parents=[home])
    lst.add_argument("--json", action="store_true")
    pro = asub.add_parser("promote", parents=[home])
    pro.add_argument("id")
    asub.add_parser("rollback", parents=[home])
    a.set_defaults(func=cmd_adapters)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"flywheel: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
