"""`flywheel serve | train | schedule | adapters ...`: parses arguments and hands off to the
part that does the work. Heavy imports happen inside each command so `--help` stays fast.

Each command group's flags and handler live in a module of its own (cli_serve, cli_train,
cli_tune, cli_adapters, cli_accounts, cli_data); a flag's default and help come from the config
dataclass of the job it sets (ServeConfig, TrainConfig, ScheduleConfig, TuneConfig,
ABConfig).

Bad input ends with one line on stderr and exit code 2; nothing is half-written.
"""

import argparse
import sqlite3
import sys

from flywheel import cli_accounts, cli_adapters, cli_data, cli_serve, cli_train, cli_tune
from flywheel.cli_common import UsageError

__all__ = ["UsageError", "main", "parser"]


def parser() -> argparse.ArgumentParser:
    home = argparse.ArgumentParser(add_help=False)
    home.add_argument("--home", help="data folder (default: $FLYWHEEL_HOME, else ./flywheel-data)")
    p = argparse.ArgumentParser(prog="flywheel", description="A self-improving chat assistant.")
    sub = p.add_subparsers(dest="command", required=True)
    # In this order in `flywheel --help`: serve, train, schedule, tune, adapters, keys, users,
    # export, backup, restore, prune.
    for group in (cli_serve, cli_train, cli_tune, cli_adapters, cli_accounts, cli_data):
        group.add_commands(sub, home)
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
