"""Each answer's judgement and the daily counts kept current on every write, filled in by the
migration from version 4, and kept by writers at once. Each is checked against a reference
computed in Python from the raw ratings, corrections and flags (tests/judgement_reference.py).
The review queue, the growing lists and the aggregates are in test_queue_and_aggregates.py."""

import random
import sqlite3
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage import Home, init_db, open_db, users
from storage import chat as store
from storage.db import (
    MIGRATIONS,
    SCHEMA_VERSION,
    WouldWait,
    _statements,
    transaction,
    without_waiting,
)
from tests.judgement_reference import daily_reference, daily_stored, reference, stored

# Ratings come up most often: disagreements between raters are what the rules are about.
actions = st.lists(st.tuples(
    st.sampled_from(["up", "down"] * 4 + ["score", "correct", "flag", "unflag", "disable",
                                          "enable", "promote", "demote", "answer"]),
    st.integers(0, 1), st.sampled_from([None, "ann", "cat"])), min_size=5, max_size=40)


@settings(max_examples=100, deadline=None)
@given(actions_=actions)
def test_every_write_keeps_each_answers_judgement_and_the_daily_counts_current(actions_):
    home = Home.resolve(__import__("tempfile").mkdtemp())
    init_db(home)
    with open_db(home) as db:
        ann = users.add_user(db, "ann")["id"]
        cat = users.add_user(db, "cat", "curator")["id"]
        who = {None: None, "ann": ann, "cat": cat}
        answers = []
        for i in range(3):
            conv = store.create_conversation(db, user_id=ann)
            q = store.add_message(db, conv, "user", f"q{i}")
            answers.append(store.add_message(db, conv, "assistant", f"a{i}", q,
                                             adapter_id=None))
        for action, index, rater in actions_:
            answer, person = answers[index], who[rater]
            if action in ("up", "down"):
                store.rate(db, answer, action, rater_id=person)
            elif action == "score":
                store.rate(db, answer, None, score=index % 5 + 1, rater_id=person)
            elif action == "correct":
                store.add_correction(db, answer, f"better {index}", author_id=person)
            elif action in ("flag", "unflag"):
                store.set_flags(db, answer, ["pii", "unsafe"][:index % 3] if action == "flag"
                                else [])
            elif action in ("disable", "enable") and rater:
                users.set_disabled(db, rater, action == "disable")
            elif action in ("promote", "demote") and rater:
                db["users"].update(person, {"role": "curator" if action == "promote" else "user"})
            elif action == "answer":
                parent = store.get_message(db, answer)["parent_id"]
                conv = store.get_message(db, answer)["conversation_id"]
                answers[index] = store.add_message(db, conv, "assistant", "again", parent)
        assert stored(db) == reference(db)
        assert daily_stored(db) == daily_reference(db)


def test_a_version_4_database_is_migrated_with_every_judgement_filled_in(tmp_path):
    home = Home.resolve(tmp_path / "old")
    conn = sqlite3.connect(home.db_path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT)")
    for version, script in enumerate(MIGRATIONS[:4], 1):
        for statement in _statements(script):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", [version])
    conn.executescript("""
        INSERT INTO users (id, name, role) VALUES (1, 'ann', 'user'), (2, 'cat', 'curator');
        INSERT INTO conversations (id, user_id, created_at) VALUES ('c1', 1, '2026-01-01');
        INSERT INTO messages (id, conversation_id, parent_id, role, content, created_at) VALUES
            ('q', 'c1', NULL, 'user', 'hi', '2026-01-01T10:00:00.000Z'),
            ('a', 'c1', 'q', 'assistant', 'hello', '2026-01-01T10:00:01.000Z'),
            ('b', 'c1', 'q', 'assistant', 'hey', '2026-01-02T10:00:01.000Z');
        INSERT INTO ratings (message_id, rater_id, rating) VALUES ('a', 2, 'down'), ('a', 1, 'up'),
            ('b', 1, 'up');
        INSERT INTO ratings (message_id, rater_id, score) VALUES ('b', 2, 4);
        INSERT INTO corrections (message_id, author_id, content) VALUES ('a', 2, 'Hello!');
        INSERT INTO flags (message_id, kind) VALUES ('b', 'pii');
    """)
    conn.close()
    assert init_db(home) == SCHEMA_VERSION
    with open_db(home) as db:
        assert stored(db) == reference(db)
        assert stored(db)["a"]["rating"] == "down"  # the curator's
        assert daily_stored(db) == {("", "2026-01-01"): (1, 0, 1), ("", "2026-01-02"): (1, 1, 0)}
        assert store.list_conversations(db, 1).rows[0]["updated_at"] == "2026-01-02T10:00:01.000Z"
        assert [c["id"] for c in store.list_conversations(db, 1, search="HEY").rows] == ["c1"]
        assert store.list_conversations(db, None, search="hey").rows == []  # ann's, not local
        given = {(r["kind"], r["count"]) for r in db["feedback_daily"].rows}
        assert given == {("thumbs", 3), ("score", 1), ("correction", 1)}  # counted on upgrade


def test_sixteen_writers_at_once_lose_nothing(home):
    with open_db(home) as db:
        conv = store.create_conversation(db)
        q = store.add_message(db, conv, "user", "q")
        answers = [store.add_message(db, conv, "assistant", f"a{i}", q) for i in range(40)]
    errors, acked = [], []
    start = threading.Barrier(16)

    def write(n: int) -> None:
        rng = random.Random(n)
        with open_db(home) as db:
            start.wait()
            for _ in range(40):
                try:
                    ids = store.record_feedback(db, rng.choice(answers), rng.choice(["up", "down"]),
                                                comment=f"w{n}", correction=f"c{n}")
                    acked.append(ids["rating_id"])
                except Exception as exc:  # collected: the assertion is that there are none
                    errors.append(exc)
    threads = [threading.Thread(target=write, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(acked) == 640
    with open_db(home) as db:
        assert db["ratings"].count == 640 and db["corrections"].count == 640
        assert stored(db) == reference(db) and daily_stored(db) == daily_reference(db)


def test_a_write_that_would_wait_says_so_at_once_and_changes_nothing(home):
    """The API writes feedback on its event loop only when no other writer holds the
    database; otherwise it must hear so at once (and then wait on a worker thread)."""
    with open_db(home) as db:
        conv = store.create_conversation(db)
        question = store.add_message(db, conv, "user", "q")
        answer = store.add_message(db, conv, "assistant", "a", question)
    other = sqlite3.connect(home.db_path, isolation_level=None)  # another process, in effect
    other.execute("BEGIN IMMEDIATE")
    with open_db(home) as db:
        with pytest.raises(WouldWait), without_waiting(db):
            store.record_feedback(db, answer, "up", comment="while locked")
    other.execute("COMMIT")
    held, release = threading.Event(), threading.Event()

    def writer_of_this_process():
        with open_db(home) as db, transaction(db):
            held.set()
            release.wait()
    thread = threading.Thread(target=writer_of_this_process)
    thread.start()
    held.wait()
    with open_db(home) as db:
        with pytest.raises(WouldWait), without_waiting(db):
            store.record_feedback(db, answer, "up", comment="while a thread writes")
    release.set()
    thread.join()
    with open_db(home) as db:
        assert db["ratings"].count == 0
        with without_waiting(db):
            store.record_feedback(db, answer, "up", comment="free")
        assert [r["comment"] for r in db["ratings"].rows] == ["free"]
