"""`flywheel adapters list | promote | rollback | ab`: the adapter registry and A/B splits
(the split's settings from ABConfig in storage/ab.py)."""

import argparse
import json

from flywheel.cli_common import UsageError, add_setting, database
from storage import ab, adapters


def add_commands(sub: argparse._SubParsersAction, home: argparse.ArgumentParser) -> None:
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
    add_setting(abp, ab.ABConfig, "share")
    abp.add_argument("--stop", action="store_true", help="end the running split")
    a.set_defaults(func=cmd_adapters)


def cmd_adapters(args: argparse.Namespace) -> int:
    with database(args) as db:
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
