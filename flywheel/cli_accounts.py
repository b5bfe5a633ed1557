"""`flywheel keys` (API keys) and `flywheel users` (accounts for the page). The roles, and
the role a new account gets, come from storage/users.py."""

import argparse
import sys

from flywheel.cli_common import UsageError, database
from storage import users


def add_commands(sub: argparse._SubParsersAction, home: argparse.ArgumentParser) -> None:
    k = sub.add_parser("keys", help="API keys: create (shown once), list, revoke")
    ksub = k.add_subparsers(dest="action", required=True)
    kc = ksub.add_parser("create", parents=[home], help="a new key for USER (created if missing)")
    kc.add_argument("user")
    kc.add_argument("--role", default=users.NEW_ROLE, choices=users.ROLES,
                    help="role for a user created now")
    ksub.add_parser("list", parents=[home])
    kr = ksub.add_parser("revoke", parents=[home])
    kr.add_argument("id", type=int)
    k.set_defaults(func=cmd_keys)

    u = sub.add_parser("users", help="accounts for the page: add, list, passwd, disable, enable")
    usub = u.add_subparsers(dest="action", required=True)
    ua = usub.add_parser("add", parents=[home])
    ua.add_argument("name")
    ua.add_argument("--role", default=users.NEW_ROLE, choices=users.ROLES)
    usub.add_parser("list", parents=[home])
    up = usub.add_parser("passwd", parents=[home])
    up.add_argument("name")
    for action in ("disable", "enable"):
        usub.add_parser(action, parents=[home]).add_argument("name")
    for sp in (ua, up):
        sp.add_argument("--password-stdin", action="store_true",
                        help="read the password from standard input")
    u.set_defaults(func=cmd_users)


def cmd_keys(args: argparse.Namespace) -> int:
    with database(args) as db:
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
    with database(args) as db:
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
