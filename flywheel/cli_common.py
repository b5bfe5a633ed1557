"""What every `flywheel` command shares: the one-line usage error, the database under
`--home`, and flags built from a typed config's fields (default, type, choices, help)."""

import argparse
import dataclasses
from contextlib import contextmanager
from typing import Any, Iterator, get_args

import sqlite_utils

from assistant.config import help_of, literal_choices
from storage import Home, init_db, open_db


class UsageError(Exception):
    """Reported as one line, exit code 2."""


@contextmanager
def database(args: argparse.Namespace) -> Iterator[sqlite_utils.Database]:
    """The database under `--home`, created or migrated first."""
    home = Home.resolve(args.home)
    init_db(home)
    with open_db(home) as db:
        yield db


def add_setting(parser: argparse.ArgumentParser, config: type, name: str) -> None:
    """`--NAME` for the field `name` of dataclass `config`: its default, type, choices and
    help (with the default, `help_of`) all read from the field."""
    f = next(f for f in dataclasses.fields(config) if f.name == name)
    kind: Any = next((t for t in (int, float) if t in (f.type, *get_args(f.type))), str)
    parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=f.default,
                        choices=literal_choices(f.type) or None, help=help_of(f))
