"""Opening the database and bringing its schema up to date.

Every connection gets the same settings: WAL (the server reads while the trainer writes),
foreign keys on, and a busy timeout so a writer waits instead of failing. Migrations are
numbered SQL scripts (storage/migrations.py) applied in order inside one transaction each; the
applied versions are rows of `schema_version`, so a database can be upgraded in place by any
newer Flywheel.
"""

import os
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator, TypeVar

import sqlite_utils

from storage.home import Home
from storage.migrations import MIGRATIONS, SCHEMA_VERSION

BUSY_TIMEOUT_MS = 10_000
# Copying the write-ahead log back into the database (a checkpoint) syncs the file to disk;
# at a thousand feedback writes a second, SQLite's default (by the committing writer, every
# 1,000 pages) cost more than the writes themselves (bench/storage.py). Every connection
# checkpoints at 10,000 pages (40 MB); a server runs a `Checkpointer` thread instead, and its
# connections only checkpoint as a backstop, at 100,000 pages.
WAL_CHECKPOINT_PAGES = 10_000
WAL_CHECKPOINT_PAGES_WITH_CHECKPOINTER = 100_000
_checkpointers = 0  # Checkpointer threads running in this process


T = TypeVar("T")


def present(row: T | None, what: str) -> T:
    """`row`, which the caller has just written or checked: a KeyError naming `what` if it
    is missing after all (and a type checker knows it is not None)."""
    if row is None:
        raise KeyError(f"no {what}")
    return row


def inserted_id(cursor: sqlite3.Cursor) -> int:
    """The rowid a one-row INSERT gave (sqlite3 types `lastrowid` as optional)."""
    return present(cursor.lastrowid, "row inserted")


def utc_now(plus_hours: float = 0.0) -> str:
    """An ISO UTC timestamp (now, or `plus_hours` from now) that sorts as text."""
    moment = datetime.now(timezone.utc) + timedelta(hours=plus_hours)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _connect(path: Path) -> sqlite_utils.Database:
    # isolation_level=None: we open transactions ourselves with `transaction()`.
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                           check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(f"PRAGMA wal_autocheckpoint = {_autocheckpoint_pages()}")
    db = sqlite_utils.Database(conn)
    with _locks_guard:
        # One lock per database file, kept on the connection's object for `transaction`.
        db.writers = _writers.setdefault(str(path), threading.RLock())  # type: ignore[attr-defined]
    return db


def _autocheckpoint_pages() -> int:
    return WAL_CHECKPOINT_PAGES_WITH_CHECKPOINTER if _checkpointers else WAL_CHECKPOINT_PAGES


# Writers of this process queue here before they ask SQLite for its write lock. SQLite's
# busy handler polls a taken lock with sleeps of 1 ms and more, while a lock hands over the
# moment the last writer commits (bench/load.py, 16 feedback writers through HTTP: 565-600
# writes/s with it, 515 without, when every write ran on a worker thread). Other processes
# (the trainer) still queue on the busy timeout. One lock per database file: writers of
# different files never wait for each other. Reentrant: a thread that writes through a
# second connection inside a transaction waits on SQLite, as before, not on itself.
_writers: dict[str, threading.RLock] = {}
_locks_guard = threading.Lock()
_unknown_file = threading.RLock()  # a connection not opened here


def _writers_of(db: sqlite_utils.Database) -> threading.RLock:
    return getattr(db, "writers", _unknown_file)


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """All-or-nothing: BEGIN IMMEDIATE takes the write lock up front, so two writers queue
    (busy timeout) instead of failing halfway through. Nested inside another transaction it
    is a savepoint, so functions that need atomicity compose."""
    if db.conn.in_transaction:
        db.execute("SAVEPOINT nested")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK TO nested")
            db.execute("RELEASE nested")
            raise
        db.execute("RELEASE nested")
        return
    with _writers_of(db):
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


class WouldWait(Exception):
    """Raised inside `without_waiting` where a write would have to wait for another writer."""


@contextmanager
def without_waiting(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """Within the block, a write that would wait for another writer (a thread of this
    process, or another process) raises WouldWait at once instead, having changed nothing.
    For a short write on the server's event loop, which must never block: the caller does
    the work there when nobody else is writing, and on a worker thread when it must wait."""
    writers = _writers_of(db)
    if not writers.acquire(blocking=False):
        raise WouldWait
    try:
        db.execute("PRAGMA busy_timeout = 0")
        try:
            yield db
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise
            raise WouldWait from exc
        finally:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    finally:
        writers.release()


def schema_version(db: sqlite_utils.Database) -> int:
    """The schema version the database is at (0: a database not yet set up)."""
    if "schema_version" not in db.table_names():
        return 0
    return db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]


def init_db(home: Home) -> int:
    """Create the database or bring it up to SCHEMA_VERSION; returns the version now in force.
    The file is readable by its owner only (it holds conversations and password hashes);
    SQLite gives its -wal and -shm files the same mode."""
    os.close(os.open(home.db_path, os.O_CREAT | os.O_RDWR, 0o600))
    if home.db_path.stat().st_mode & 0o077:
        home.db_path.chmod(0o600)
    db = _connect(home.db_path)
    try:
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                   "applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))")
        current = schema_version(db)
        if current > SCHEMA_VERSION:
            raise RuntimeError(f"database {home.db_path} has schema version {current}, newer than "
                               f"this Flywheel ({SCHEMA_VERSION}); upgrade Flywheel")
        for version in range(current + 1, SCHEMA_VERSION + 1):
            with transaction(db):
                for statement in _statements(MIGRATIONS[version - 1]):
                    db.execute(statement)
                db.execute("INSERT INTO schema_version (version) VALUES (?)", [version])
        return schema_version(db)
    finally:
        db.close()


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT our transaction; split and run statement by statement.
    parts, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            parts.append(buffer.strip())
            buffer = ""
    return [p for p in parts if p]


# The API's hot path (auth and feedback) keeps each thread's connections open between uses.
# Opening one costs about 1 ms of CPU (SQLite parses the whole schema again), while a feedback
# write on an open connection costs 0.3 ms: with a fresh connection per use, a feedback
# request through HTTP opened three and the server managed 165 writes a second. Bounded per
# thread, and dropped when the file was replaced (a restore) or the process forked.
_open = threading.local()
OPEN_PER_THREAD = 4


@dataclass
class _Kept:
    """A connection this thread keeps open."""
    db: sqlite_utils.Database
    identity: tuple[int, int] | None  # the file it opened (device, inode)
    pages: int                        # its wal_autocheckpoint
    blocks: int = 0                   # open_db blocks using it now


@contextmanager
def open_db(home: Home, keep: bool = False) -> Iterator[sqlite_utils.Database]:
    """A connection to the database, closed when the block ends; never share one across
    threads. `keep`: this thread's kept connection instead, for a hot path whose queries
    are all read to the end (a statement left half-read would hold an old snapshot open for
    the next block). A kept block inside another gets the same connection; whatever the
    outermost one leaves uncommitted is rolled back when it ends."""
    if not keep:
        db = _connect(home.db_path)
        try:
            yield db
        finally:
            db.close()
        return
    kept = _kept_connection(home.db_path)
    kept.blocks += 1
    try:
        yield kept.db
    finally:
        kept.blocks -= 1
        if kept.blocks == 0 and kept.db.conn.in_transaction:
            kept.db.conn.rollback()


def _kept_connection(path: Path) -> _Kept:
    """The calling thread's open connection to `path`, opened (or reopened) when needed."""
    if getattr(_open, "pid", None) != os.getpid():
        _open.pid, _open.cache = os.getpid(), {}  # never use a connection across a fork
    cache: dict[str, _Kept] = _open.cache
    key = str(path)
    kept = cache.pop(key, None)
    if kept is not None and kept.identity != _identity(path):
        if not kept.blocks:  # else a block still uses it: it closes when dropped
            kept.db.close()
        kept = None
    if kept is None:
        db = _connect(path)
        kept = _Kept(db, _identity(path), _autocheckpoint_pages())
    elif kept.pages != _autocheckpoint_pages():  # a Checkpointer started since
        kept.pages = _autocheckpoint_pages()
        kept.db.execute(f"PRAGMA wal_autocheckpoint = {kept.pages}")
    idle = [k for k, other in cache.items() if not other.blocks]  # least recently used first
    while idle and len(cache) >= OPEN_PER_THREAD:
        cache.pop(idle.pop(0)).db.close()
    cache[key] = kept  # the most recently used last
    return kept


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        file = os.stat(path)
    except FileNotFoundError:
        return None
    return file.st_dev, file.st_ino


def close_thread_connections() -> None:
    """Close the calling thread's open connections (before a database file is replaced)."""
    for kept in getattr(_open, "cache", {}).values():
        kept.db.close()
    _open.cache = {}


class Checkpointer:
    """Checkpoints the database from a background thread every `interval` seconds (SQLite's
    PASSIVE mode: it copies what no reader still needs and never blocks a writer), so that
    writers never wait for the disk sync a checkpoint ends with."""

    def __init__(self, home: Home, interval: float = 0.5):
        self.path, self.interval = home.db_path, interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="flywheel-checkpoint", daemon=True)

    def start(self) -> "Checkpointer":
        """Start checkpointing on the background thread; returns self."""
        global _checkpointers
        _checkpointers += 1
        self.thread.start()
        return self

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
        try:
            while not self.stopped.wait(self.interval):
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    def stop(self) -> None:
        """Stop the checkpoint thread and wait for it (up to 30 s); a second stop does nothing."""
        global _checkpointers
        if not self.stopped.is_set():
            self.stopped.set()
            self.thread.join(timeout=30)
            _checkpointers -= 1
