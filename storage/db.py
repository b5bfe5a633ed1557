"""Opening the database and migrating its schema.

Every connection gets the same settings: WAL (the server reads while the trainer writes),
foreign keys on, and a busy timeout so a writer waits instead of failing. Migrations are
numbered SQL scripts applied in order inside one transaction each; the applied versions are
rows of `schema_version`, so a database can be upgraded in place by any newer Flywheel.
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

BUSY_TIMEOUT_MS = 10_000
# Copying the write-ahead log back into the database (a checkpoint) syncs the file to disk;
# at a thousand feedback writes a second, SQLite's default (by the committing writer, every
# 1,000 pages) cost more than the writes themselves (bench/storage.py). Every connection
# checkpoints at 10,000 pages (40 MB); a server runs a `Checkpointer` thread instead, and its
# connections only checkpoint as a backstop, at 100,000 pages.
WAL_CHECKPOINT_PAGES = 10_000
WAL_CHECKPOINT_PAGES_WITH_CHECKPOINTER = 100_000
_checkpointers = 0  # Checkpointer threads running in this process

# The rating that counts for an answer: a curator's (or admin's, or the local owner's) over
# any user's, the latest among equals; a disabled user's ratings do not count. The score is the
# latest one given. These recount one answer's judgement from its ratings, corrections and flags
# (a handful of rows, by index): triggers run them in the transaction that changed them.
_COUNTING = """
    UPDATE judgements SET
        (rating, by_curator, reasons, rated_at) = (
            SELECT r.rating, (r.rater_id IS NULL OR u.role IN ('curator', 'admin')) AS curator,
                   r.reasons, r.created_at
            FROM ratings r LEFT JOIN users u ON u.id = r.rater_id
            WHERE r.message_id = judgements.message_id AND r.rating IS NOT NULL
                  AND NOT COALESCE(u.disabled, 0)
            ORDER BY curator DESC, r.id DESC LIMIT 1),
        score = (
            SELECT r.score FROM ratings r LEFT JOIN users u ON u.id = r.rater_id
            WHERE r.message_id = judgements.message_id AND r.score IS NOT NULL
                  AND NOT COALESCE(u.disabled, 0)
            ORDER BY r.id DESC LIMIT 1)"""
_RECOUNT = {
    "recount_ratings": _COUNTING,
    "recount_correction": """
    UPDATE judgements SET correction_id =
        (SELECT MAX(id) FROM corrections WHERE message_id = judgements.message_id)""",
    "recount_flags": """
    UPDATE judgements SET flags = (SELECT group_concat(kind, ',') FROM
        (SELECT DISTINCT kind FROM flags WHERE message_id = judgements.message_id ORDER BY kind))""",  # noqa: E501
}

MIGRATIONS: list[str] = [
    # 1: the whole first schema.
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'curator', 'admin')),
        password_hash TEXT,
        consent INTEGER NOT NULL DEFAULT 1,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    CREATE TABLE api_keys (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        key_hash TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        revoked_at TEXT
    );
    CREATE TABLE adapters (
        id TEXT PRIMARY KEY,
        base_model TEXT NOT NULL,
        method TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'candidate'
            CHECK (status IN ('candidate', 'active', 'rejected', 'retired')),
        parent_id TEXT REFERENCES adapters(id),
        run_id TEXT,
        metrics TEXT NOT NULL DEFAULT '{}',
        path TEXT NOT NULL,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    -- At most one adapter serves by default at any time.
    CREATE UNIQUE INDEX adapters_one_active ON adapters(status) WHERE status = 'active';
    CREATE TABLE promotions (
        id INTEGER PRIMARY KEY,
        adapter_id TEXT REFERENCES adapters(id),  -- NULL: back to the bare base model
        action TEXT NOT NULL CHECK (action IN ('promote', 'rollback')),
        reason TEXT,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    CREATE TABLE training_runs (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL DEFAULT 'running'
            CHECK (status IN ('running', 'succeeded', 'failed')),
        base_model TEXT NOT NULL,
        method TEXT NOT NULL,
        config TEXT NOT NULL DEFAULT '{}',
        manifest TEXT NOT NULL DEFAULT '{}',
        metrics TEXT NOT NULL DEFAULT '{}',
        error TEXT,
        adapter_id TEXT REFERENCES adapters(id),
        started_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        finished_at TEXT
    );
    CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        user_id INTEGER REFERENCES users(id),
        title TEXT,
        system_prompt TEXT,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        deleted_at TEXT
    );
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations(id),
        parent_id TEXT REFERENCES messages(id),  -- siblings = regenerations or edited turns
        role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
        content TEXT NOT NULL,
        model TEXT,
        adapter_id TEXT REFERENCES adapters(id),  -- NULL: the bare base model answered
        params TEXT,                              -- generation parameters, JSON
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        latency_ms REAL,
        finish_reason TEXT,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    CREATE INDEX messages_conversation ON messages(conversation_id);
    CREATE INDEX messages_parent ON messages(parent_id);
    CREATE INDEX messages_adapter ON messages(adapter_id);
    CREATE TABLE ratings (
        id INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL REFERENCES messages(id),
        rater_id INTEGER REFERENCES users(id),
        rating TEXT CHECK (rating IN ('up', 'down')),
        score INTEGER CHECK (score BETWEEN 1 AND 5),
        reasons TEXT NOT NULL DEFAULT '[]',
        comment TEXT,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    CREATE INDEX ratings_message ON ratings(message_id);
    CREATE TABLE corrections (
        id INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL REFERENCES messages(id),
        author_id INTEGER REFERENCES users(id),
        content TEXT NOT NULL,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    CREATE INDEX corrections_message ON corrections(message_id);
    CREATE TABLE flags (
        id INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL REFERENCES messages(id),
        kind TEXT NOT NULL CHECK (kind IN ('pii', 'unsafe', 'no_consent')),
        author_id INTEGER REFERENCES users(id),
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    """,
    # 2: what the server did with each promoted adapter (swapped in, or refused and why).
    """
    CREATE TABLE adapter_events (
        id INTEGER PRIMARY KEY,
        adapter_id TEXT NOT NULL REFERENCES adapters(id),
        event TEXT NOT NULL CHECK (event IN ('served', 'refused')),
        detail TEXT,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    CREATE INDEX adapter_events_adapter ON adapter_events(adapter_id);
    CREATE INDEX api_keys_user ON api_keys(user_id);
    """,
    # 3: signed-in browser sessions, and curators' side-by-side picks.
    """
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        expires_at TEXT NOT NULL,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    CREATE TABLE comparisons (
        id INTEGER PRIMARY KEY,
        prompt_id TEXT NOT NULL REFERENCES messages(id),   -- the user turn both answered
        answer_a TEXT NOT NULL REFERENCES messages(id),
        answer_b TEXT NOT NULL REFERENCES messages(id),
        winner TEXT NOT NULL CHECK (winner IN ('a', 'b', 'tie')),
        curator_id INTEGER REFERENCES users(id),
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    CREATE INDEX flags_message ON flags(message_id);
    """,
    # 4: a training run's live progress and starting point; A/B splits of new conversations.
    """
    ALTER TABLE training_runs ADD COLUMN progress TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE training_runs ADD COLUMN start_from TEXT;  -- NULL: the base model; else an adapter
    CREATE TABLE ab_tests (
        id INTEGER PRIMARY KEY,
        candidate_id TEXT NOT NULL REFERENCES adapters(id),
        share REAL NOT NULL CHECK (share > 0 AND share < 1),
        started_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        ended_at TEXT,
        reason TEXT
    );
    -- At most one split runs at a time.
    CREATE UNIQUE INDEX ab_tests_one_running ON ab_tests((ended_at IS NULL)) WHERE ended_at IS NULL;
    CREATE INDEX ratings_created ON ratings(created_at);
    """,
    # 5: a year of feedback. Each answer's latest judgement (the rating that counts, score,
    # correction, flags) kept current by triggers in the writing transaction, so the review
    # queue and the trainer read one row per answer instead of scanning every rating; daily
    # thumbs per adapter for the plots; a conversation's last activity for its list; indexes
    # for keyset paging and retention.
    """
    ALTER TABLE conversations ADD COLUMN updated_at TEXT;
    UPDATE conversations SET updated_at = COALESCE(
        (SELECT MAX(created_at) FROM messages WHERE conversation_id = conversations.id),
        created_at);
    CREATE INDEX conversations_recent ON conversations(user_id, updated_at DESC, id DESC)
        WHERE deleted_at IS NULL;
    CREATE INDEX conversations_updated ON conversations(updated_at);
    CREATE TRIGGER conversations_touch_new AFTER INSERT ON conversations
        WHEN NEW.updated_at IS NULL BEGIN
        UPDATE conversations SET updated_at = NEW.created_at WHERE id = NEW.id;
    END;
    CREATE TRIGGER messages_touch AFTER INSERT ON messages BEGIN
        UPDATE conversations SET updated_at = NEW.created_at WHERE id = NEW.conversation_id;
    END;

    CREATE TABLE judgements (
        message_id TEXT PRIMARY KEY REFERENCES messages(id),
        conversation_id TEXT NOT NULL,
        parent_id TEXT,
        adapter_id TEXT,
        created_at TEXT NOT NULL,           -- the answer's
        rating TEXT,                        -- the rating that counts (see _COUNTING below)
        by_curator INTEGER,
        reasons TEXT,
        rated_at TEXT,
        score INTEGER,                      -- the latest 1-5 score
        correction_id INTEGER,              -- the latest correction
        flags TEXT,                         -- 'no_consent,pii': sorted, NULL when none
        reviewed INTEGER GENERATED ALWAYS AS
            (score IS NOT NULL OR correction_id IS NOT NULL OR flags IS NOT NULL) VIRTUAL,
        rank INTEGER GENERATED ALWAYS AS                      -- the review queue's order
            (CASE rating WHEN 'down' THEN 0 WHEN 'up' THEN 2 ELSE 1 END) VIRTUAL
    ) WITHOUT ROWID;
    INSERT INTO judgements (message_id, conversation_id, parent_id, adapter_id, created_at)
        SELECT id, conversation_id, parent_id, adapter_id, created_at FROM messages
        WHERE role = 'assistant';
    CREATE INDEX ratings_rater ON ratings(rater_id);
    {recount_ratings} WHERE message_id IN (SELECT message_id FROM ratings);
    {recount_correction} WHERE message_id IN (SELECT message_id FROM corrections);
    {recount_flags} WHERE message_id IN (SELECT message_id FROM flags);
    -- Queue pages: one index per filter combination, each in the queue's order.
    CREATE INDEX judgements_queue ON judgements(rank, created_at DESC, message_id DESC);
    CREATE INDEX judgements_queue_adapter
        ON judgements(rank, adapter_id, created_at DESC, message_id DESC);
    CREATE INDEX judgements_queue_reviewed
        ON judgements(rank, reviewed, created_at DESC, message_id DESC);
    CREATE INDEX judgements_queue_adapter_reviewed
        ON judgements(rank, adapter_id, reviewed, created_at DESC, message_id DESC);
    -- A time window of answers (the A/B report); the trainer's stream of judged answers;
    -- answers to one question that were rated (liked vs disliked pairs).
    CREATE INDEX judgements_window ON judgements(created_at, adapter_id, rating);
    CREATE INDEX judgements_judged ON judgements(created_at, message_id)
        WHERE rating IS NOT NULL OR score IS NOT NULL OR correction_id IS NOT NULL;
    CREATE INDEX judgements_rated_siblings ON judgements(parent_id, rating)
        WHERE rating IS NOT NULL;

    CREATE TABLE thumbs_daily (
        adapter TEXT NOT NULL,              -- '' for the bare base model
        day TEXT NOT NULL,                  -- the answers' day, YYYY-MM-DD (UTC)
        answers INTEGER NOT NULL DEFAULT 0,
        up INTEGER NOT NULL DEFAULT 0,
        down INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (adapter, day)
    ) WITHOUT ROWID;
    INSERT INTO thumbs_daily (adapter, day, answers, up, down)
        SELECT COALESCE(adapter_id, ''), substr(created_at, 1, 10), COUNT(*),
               SUM(rating IS 'up'), SUM(rating IS 'down')
        FROM judgements GROUP BY 1, 2;

    CREATE TRIGGER messages_judgement AFTER INSERT ON messages
        WHEN NEW.role = 'assistant' BEGIN
        INSERT INTO judgements (message_id, conversation_id, parent_id, adapter_id, created_at)
            VALUES (NEW.id, NEW.conversation_id, NEW.parent_id, NEW.adapter_id, NEW.created_at);
        INSERT INTO thumbs_daily (adapter, day, answers)
            VALUES (COALESCE(NEW.adapter_id, ''), substr(NEW.created_at, 1, 10), 1)
            ON CONFLICT (adapter, day) DO UPDATE SET answers = answers + 1;
    END;
    CREATE TRIGGER ratings_judgement AFTER INSERT ON ratings BEGIN
        {recount_ratings} WHERE message_id = NEW.message_id;
    END;
    CREATE TRIGGER ratings_gone AFTER DELETE ON ratings BEGIN
        {recount_ratings} WHERE message_id = OLD.message_id;
    END;
    CREATE TRIGGER corrections_judgement AFTER INSERT ON corrections BEGIN
        {recount_correction} WHERE message_id = NEW.message_id;
    END;
    CREATE TRIGGER corrections_gone AFTER DELETE ON corrections BEGIN
        {recount_correction} WHERE message_id = OLD.message_id;
    END;
    CREATE TRIGGER flags_judgement AFTER INSERT ON flags BEGIN
        {recount_flags} WHERE message_id = NEW.message_id;
    END;
    CREATE TRIGGER flags_gone AFTER DELETE ON flags BEGIN
        {recount_flags} WHERE message_id = OLD.message_id;
    END;
    -- A new role or a disabled account changes which of that user's ratings count.
    CREATE TRIGGER users_judgements AFTER UPDATE OF role, disabled ON users BEGIN
        {recount_ratings}
            WHERE message_id IN (SELECT message_id FROM ratings WHERE rater_id = NEW.id);
    END;
    CREATE TRIGGER judgements_thumbs AFTER UPDATE OF rating ON judgements
        WHEN OLD.rating IS NOT NEW.rating BEGIN
        UPDATE thumbs_daily SET up = up - (OLD.rating IS 'up') + (NEW.rating IS 'up'),
                                down = down - (OLD.rating IS 'down') + (NEW.rating IS 'down')
            WHERE adapter = COALESCE(NEW.adapter_id, '') AND day = substr(NEW.created_at, 1, 10);
    END;
    CREATE TRIGGER judgements_gone AFTER DELETE ON judgements BEGIN
        UPDATE thumbs_daily SET answers = answers - 1, up = up - (OLD.rating IS 'up'),
                                down = down - (OLD.rating IS 'down')
            WHERE adapter = COALESCE(OLD.adapter_id, '') AND day = substr(OLD.created_at, 1, 10);
    END;

    ALTER TABLE training_runs ADD COLUMN examples INTEGER;  -- the manifest's count, unparsed
    UPDATE training_runs SET examples = json_extract(manifest, '$.count');
    CREATE INDEX training_runs_started ON training_runs(started_at, id);
    CREATE INDEX adapters_created ON adapters(created_at, id);
    CREATE INDEX adapter_events_refused ON adapter_events(event, adapter_id);
    CREATE INDEX comparisons_prompt ON comparisons(prompt_id);
    CREATE INDEX sessions_expiry ON sessions(expires_at);
    CREATE INDEX sessions_user ON sessions(user_id);
    CREATE INDEX api_keys_user_id ON api_keys(user_id, id);
    """.format(**_RECOUNT),
    # 6: answers being generated, written as they stream (at a bounded rate), so a server
    # killed mid-answer keeps what it had: the next start stores them as `interrupted`.
    """
    CREATE TABLE partial_answers (
        id TEXT PRIMARY KEY,                  -- the answer's message id, chosen up front
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        parent_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        content TEXT NOT NULL DEFAULT '',
        model TEXT,
        adapter_id TEXT,
        params TEXT,
        prompt_tokens INTEGER,
        started_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    """,
    # 7: blind side-by-side picks: "both bad" kept apart from a tie, the curator's reason, and
    # which answer was shown first (to see a position bias). SQLite cannot change a CHECK in
    # place, so the table is rebuilt, as its documentation describes.
    """
    CREATE TABLE comparisons_new (
        id INTEGER PRIMARY KEY,
        prompt_id TEXT NOT NULL REFERENCES messages(id),
        answer_a TEXT NOT NULL REFERENCES messages(id),
        answer_b TEXT NOT NULL REFERENCES messages(id),
        winner TEXT NOT NULL CHECK (winner IN ('a', 'b', 'tie', 'both_bad')),
        reason TEXT,
        shown_first TEXT CHECK (shown_first IN ('a', 'b')),
        curator_id INTEGER REFERENCES users(id),
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    INSERT INTO comparisons_new (id, prompt_id, answer_a, answer_b, winner, curator_id,
                                 created_at)
        SELECT id, prompt_id, answer_a, answer_b, winner, curator_id, created_at
        FROM comparisons;
    DROP TABLE comparisons;
    ALTER TABLE comparisons_new RENAME TO comparisons;
    CREATE INDEX comparisons_prompt ON comparisons(prompt_id);
    """,
    # 8: feedback given per day, of each kind, kept current on write like thumbs_daily: the
    # admin's plots read a few hundred rows whatever the history. Counts only (no text, no
    # user), so they stay when a conversation is erased: the day's work was done.
    """
    CREATE TABLE feedback_daily (
        day TEXT NOT NULL,                  -- the day it was given, YYYY-MM-DD (UTC)
        kind TEXT NOT NULL CHECK (kind IN ('thumbs', 'score', 'correction', 'comparison')),
        count INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (day, kind)
    ) WITHOUT ROWID;
    INSERT INTO feedback_daily (day, kind, count)
        SELECT substr(created_at, 1, 10), 'thumbs', COUNT(*) FROM ratings
        WHERE rating IS NOT NULL GROUP BY 1;
    INSERT INTO feedback_daily (day, kind, count)
        SELECT substr(created_at, 1, 10), 'score', COUNT(*) FROM ratings
        WHERE score IS NOT NULL GROUP BY 1;
    INSERT INTO feedback_daily (day, kind, count)
        SELECT substr(created_at, 1, 10), 'correction', COUNT(*) FROM corrections GROUP BY 1;
    INSERT INTO feedback_daily (day, kind, count)
        SELECT substr(created_at, 1, 10), 'comparison', COUNT(*) FROM comparisons GROUP BY 1;
    CREATE TRIGGER ratings_daily AFTER INSERT ON ratings BEGIN
        INSERT INTO feedback_daily (day, kind, count)
            SELECT substr(NEW.created_at, 1, 10), 'thumbs', 1 WHERE NEW.rating IS NOT NULL
            ON CONFLICT (day, kind) DO UPDATE SET count = count + 1;
        INSERT INTO feedback_daily (day, kind, count)
            SELECT substr(NEW.created_at, 1, 10), 'score', 1 WHERE NEW.score IS NOT NULL
            ON CONFLICT (day, kind) DO UPDATE SET count = count + 1;
    END;
    CREATE TRIGGER corrections_daily AFTER INSERT ON corrections BEGIN
        INSERT INTO feedback_daily (day, kind, count)
            VALUES (substr(NEW.created_at, 1, 10), 'correction', 1)
            ON CONFLICT (day, kind) DO UPDATE SET count = count + 1;
    END;
    CREATE TRIGGER comparisons_daily AFTER INSERT ON comparisons BEGIN
        INSERT INTO feedback_daily (day, kind, count)
            VALUES (substr(NEW.created_at, 1, 10), 'comparison', 1)
            ON CONFLICT (day, kind) DO UPDATE SET count = count + 1;
    END;
    CREATE INDEX promotions_created ON promotions(created_at);
    """,
    # 9: deleted conversations, found without reading the others (the queue's counts leave
    # their answers out; there are few, as `flywheel prune` erases them nightly).
    """
    CREATE INDEX conversations_deleted ON conversations(deleted_at) WHERE deleted_at IS NOT NULL;
    """,
    # 10: the words of every message, for the conversation list's search (storage/chat.py
    # `list_conversations`), tagged with the owner of its conversation ("u17", "unone" for
    # the local owner), so FTS5 itself intersects a person's messages with the words and a
    # common word costs what that person wrote, not what everyone did. Contentless: the text
    # stays in `messages` only; triggers keep the index current in the writer's transaction
    # (a delete must repeat what was indexed, and messages go before their conversation).
    # Messages keep their rowids: nothing here VACUUMs, and `flywheel backup` copies pages.
    """
    CREATE VIRTUAL TABLE messages_fts USING fts5(
        content, owner, content='', tokenize='unicode61 remove_diacritics 2');
    INSERT INTO messages_fts (rowid, content, owner)
        SELECT m.rowid, m.content, 'u' || COALESCE(c.user_id, 'none')
        FROM messages m JOIN conversations c ON c.id = m.conversation_id;
    CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts (rowid, content, owner) VALUES (NEW.rowid, NEW.content,
            (SELECT 'u' || COALESCE(user_id, 'none') FROM conversations
             WHERE id = NEW.conversation_id));
    END;
    CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, content, owner) VALUES ('delete',
            OLD.rowid, OLD.content, (SELECT 'u' || COALESCE(user_id, 'none') FROM conversations
                                     WHERE id = OLD.conversation_id));
    END;
    CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, content, owner) VALUES ('delete',
            OLD.rowid, OLD.content, (SELECT 'u' || COALESCE(user_id, 'none') FROM conversations
                                     WHERE id = OLD.conversation_id));
        INSERT INTO messages_fts (rowid, content, owner) VALUES (NEW.rowid, NEW.content,
            (SELECT 'u' || COALESCE(user_id, 'none') FROM conversations
             WHERE id = NEW.conversation_id));
    END;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


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
