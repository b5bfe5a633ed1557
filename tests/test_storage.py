import json
import sqlite3

import pytest

from storage import SCHEMA_VERSION, Home, adapters, init_db, open_db, runs
from storage import chat as store
from storage.db import schema_version


def test_new_database_is_migrated_with_wal_foreign_keys_and_busy_timeout(home):
    with open_db(home) as db:
        assert schema_version(db) == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
        assert {"users", "api_keys", "conversations", "messages", "ratings", "corrections",
                "flags", "adapters", "promotions", "training_runs"} <= set(db.table_names())


def test_migration_is_idempotent_and_refuses_a_newer_schema(home):
    assert init_db(home) == SCHEMA_VERSION
    with open_db(home) as db:
        db.execute("INSERT INTO schema_version (version) VALUES (?)", [SCHEMA_VERSION + 1])
    with pytest.raises(RuntimeError, match="newer than this Flywheel"):
        init_db(home)


def test_messages_form_a_tree_and_history_follows_one_branch(home):
    with open_db(home) as db:
        conv = store.create_conversation(db, system_prompt="Be brief.")
        q = store.add_message(db, conv, "user", "Capital of France?")
        a1 = store.add_message(db, conv, "assistant", "Paris.", q, adapter_id=None,
                               params={"temperature": 0.7}, prompt_tokens=12,
                               completion_tokens=3, latency_ms=40.5, finish_reason="stop")
        a2 = store.add_message(db, conv, "assistant", "It is Paris.", q)  # a regeneration
        follow = store.add_message(db, conv, "user", "And Spain?", a2)
        assert store.history(db, follow) == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "It is Paris."},
            {"role": "user", "content": "And Spain?"},
        ]
        stored = store.get_message(db, a1)
        assert stored["parent_id"] == q and stored["completion_tokens"] == 3
        assert json.loads(stored["params"]) == {"temperature": 0.7}
        siblings = [m["id"] for m in db["messages"].rows_where("parent_id = ?", [q])]
        assert sorted(siblings) == sorted([a1, a2])


def test_foreign_keys_reject_orphans(home):
    with open_db(home) as db, pytest.raises(sqlite3.IntegrityError):
        store.add_message(db, "conv-missing", "user", "hi")


def test_latest_rating_counts_and_corrections_keep_the_original(home):
    with open_db(home) as db:
        conv = store.create_conversation(db)
        q = store.add_message(db, conv, "user", "2+2?")
        a = store.add_message(db, conv, "assistant", "5", q)
        store.rate(db, a, "up")
        store.rate(db, a, "down")  # changed their mind
        assert [r["rating"] for r in store.latest_ratings(db)] == ["down"]
        store.add_correction(db, a, "4")
        assert store.get_message(db, a)["content"] == "5"
        assert store.corrections(db)[0]["correction"] == "4"
        assert store.feedback_counts(db) == {"up": 0, "down": 1, "corrections": 1}
        with pytest.raises(ValueError):
            store.rate(db, a, "meh")
        with pytest.raises(KeyError):
            store.rate(db, q, "up")  # only answers are rated


def _publish(home, db, adapter_id):
    staged = adapters.staging_path(home, adapter_id)
    (staged / "adapter_config.json").write_text("{}")
    return adapters.publish(db, home, adapter_id, base_model="tiny", method="sft")


def test_publish_renames_staging_into_place_and_registers_a_candidate(home):
    with open_db(home) as db:
        row = _publish(home, db, "ad-1")
        assert row["status"] == "candidate"
        assert (home.adapters_dir / "ad-1" / "adapter_config.json").is_file()
        assert not (home.staging_dir / "ad-1").exists()
        adapters.staging_path(home, "ad-broken")  # never finished writing
        with pytest.raises(FileNotFoundError):
            adapters.publish(db, home, "ad-broken", base_model="tiny", method="sft")
        assert adapters.get(db, "ad-broken") is None
        assert not (home.adapters_dir / "ad-broken").exists()


def test_promote_and_rollback_keep_one_active_adapter(home):
    with open_db(home) as db:
        for name in ("ad-1", "ad-2"):
            _publish(home, db, name)
        adapters.promote(db, "ad-1")
        adapters.promote(db, "ad-2")
        assert adapters.active(db)["id"] == "ad-2"
        assert adapters.get(db, "ad-1")["status"] == "retired"
        assert adapters.rollback(db)["id"] == "ad-1"
        assert adapters.get(db, "ad-2")["status"] == "retired"
        assert adapters.rollback(db) is None  # back to the base model
        with pytest.raises(LookupError):
            adapters.rollback(db)
        with pytest.raises(KeyError):
            adapters.promote(db, "ad-missing")
        actions = [r["action"] for r in db["promotions"].rows]
        assert actions == ["promote", "promote", "rollback", "rollback"]


def test_failed_transaction_leaves_nothing_half_written(home):
    with open_db(home) as db:
        _publish(home, db, "ad-1")
        with pytest.raises(sqlite3.IntegrityError):
            with store.transaction(db):
                db.execute("UPDATE adapters SET status = 'retired'")
                db.execute("UPDATE adapters SET status = 'bogus'")  # violates the CHECK
        assert adapters.get(db, "ad-1")["status"] == "candidate"


def test_training_runs_record_config_manifest_and_outcome(home):
    with open_db(home) as db:
        run = runs.start(db, base_model="tiny", method="sft", config={"lr": 1e-3},
                         manifest={"count": 2})
        runs.fail(db, run, "boom")
        row = runs.get(db, run)
        assert row["status"] == "failed" and row["error"] == "boom"
        assert row["config"] == {"lr": 1e-3} and row["manifest"] == {"count": 2}


def test_home_defaults_to_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "envhome"))
    assert Home.resolve().root == (tmp_path / "envhome").resolve()
    assert Home.resolve(tmp_path / "flag").root == (tmp_path / "flag").resolve()


def test_siblings_branches_and_the_review_queue(home):
    from storage import review
    with open_db(home) as db:
        conv = store.create_conversation(db)
        q = store.add_message(db, conv, "user", "Capital of France?")
        first = store.add_message(db, conv, "assistant", "Lyon.", q, adapter_id=None)
        second = store.add_message(db, conv, "assistant", "Paris.", q)  # regenerated
        follow = store.add_message(db, conv, "user", "And Spain?", second)
        assert store.siblings(db, first) == store.siblings(db, second) == [first, second]
        assert store.latest_leaf(db, q) == follow and store.latest_leaf(db, first) == first
        edited = store.add_message(db, conv, "user", "Capital of Italy?", None)  # an edit
        assert store.siblings(db, q) == [q, edited]

        store.rate(db, first, "down")
        store.rate(db, second, "up")
        third = store.add_message(db, conv, "assistant", "Rome.", edited)
        assert [r["id"] for r in review.review_queue(db).rows] == [first, third, second]
        assert [r["id"] for r in review.review_queue(db, rating="up").rows] == [second]
        assert [r["id"] for r in review.review_queue(db, rating="unrated").rows] == [third]
        store.set_flags(db, first, ["pii"])
        assert [r["id"] for r in review.review_queue(db, reviewed="no").rows] == [third, second]
        assert review.review_queue(db, since="2999-01-01").rows == []
        with pytest.raises(ValueError):
            store.set_flags(db, first, ["boring"])
        assert store.flags(db, first) == ["pii"]  # unchanged by the refused call
        assert review.adapter_ratings(db) == {None: {"up": 1, "down": 1, "rate": 0.5}}
        with pytest.raises(ValueError):
            review.record_comparison(db, q, first, second, "both")
        review.record_comparison(db, q, first, second, "b")
        assert db["comparisons"].count == 1


def test_nested_transactions_roll_back_only_their_part(home):
    from storage.db import transaction
    with open_db(home) as db:
        with transaction(db):
            conv = store.create_conversation(db)
            with pytest.raises(RuntimeError), transaction(db):
                store.add_message(db, conv, "user", "kept out")
                raise RuntimeError
            store.add_message(db, conv, "user", "kept")
        assert [m["content"] for m in db["messages"].rows] == ["kept"]


def test_each_user_lists_only_their_own_live_conversations(home):
    from storage import users
    with open_db(home) as db:
        alice, bob = (users.add_user(db, n)["id"] for n in ("alice", "bob"))
        mine = store.create_conversation(db, user_id=alice, title="mine")
        gone = store.create_conversation(db, user_id=alice, title="gone")
        store.create_conversation(db, user_id=bob, title="theirs")
        store.create_conversation(db, title="local")
        store.delete_conversation(db, gone)
        store.update_conversation(db, mine, title="renamed", system_prompt="Be brief.")
        assert [c["title"] for c in store.list_conversations(db, alice).rows] == ["renamed"]
        assert [c["title"] for c in store.list_conversations(db, None).rows] == ["local"]
        assert store.get_conversation(db, mine)["system_prompt"] == "Be brief."
        assert store.get_conversation(db, gone) is None
        with pytest.raises(ValueError):
            store.update_conversation(db, mine, title="  ")


def test_each_thread_keeps_its_connection_and_a_replaced_file_is_reopened(tmp_path):
    """open_db(keep=True) keeps a connection per thread (opening one costs more than a
    write), never shares one between threads, and notices when the file is replaced."""
    import os
    import threading
    home = Home.resolve(tmp_path / "home")
    init_db(home)
    with open_db(home, keep=True) as db:
        first = db.conn
        store.create_conversation(db, title="before")
    with open_db(home, keep=True) as db:
        assert db.conn is first
    with open_db(home) as db:
        assert db.conn is not first  # a connection of its own, closed at the end
    other = []
    thread = threading.Thread(
        target=lambda: other.append(open_db(home, keep=True).__enter__().conn))
    thread.start()
    thread.join()
    assert other[0] is not first
    replacement = Home.resolve(tmp_path / "other")
    init_db(replacement)
    with open_db(replacement) as db:
        store.create_conversation(db, title="after")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # all of it in the file that moves
    for suffix in ("-wal", "-shm"):
        (tmp_path / "home" / f"flywheel.db{suffix}").unlink(missing_ok=True)
    os.replace(replacement.db_path, home.db_path)
    with open_db(home, keep=True) as db:
        assert db.conn is not first
        assert [r["title"] for r in db["conversations"].rows] == ["after"]


def test_each_answer_shown_knows_its_place_among_its_versions_and_who_wrote_it(home):
    with open_db(home) as db:
        conversation = store.create_conversation(db)
        question = store.add_message(db, conversation, "user", "a question")
        first = store.add_message(db, conversation, "assistant", "one", question)
        second = store.add_message(db, conversation, "assistant", "two", question)  # regenerated
        follow_up = store.add_message(db, conversation, "user", "a follow-up", second)
        last = store.add_message(db, conversation, "assistant", "three", follow_up)
        shown = store.answer_details(db, [question, second, follow_up, last])
        assert [(d["id"], d["at"], d["of"], d["version"]) for d in shown] == [
            (second, 2, 2, "the base model"), (last, 1, 1, "the base model")]
        assert store.siblings(db, first) == [first, second]  # the same order as `at`
        assert store.answer_details(db, [first])[0]["at"] == 1


def test_a_search_finds_words_in_any_message_of_ones_own_live_conversations(home):
    """The list's search: every word in the title (any case, anywhere in it) or every word
    in one message (any case and accents; the last may be a beginning), only among the person's
    own conversations that are not deleted; checked against the raw rows, also after a
    prune has erased some (the index forgets what is erased)."""
    import random
    import re

    from storage import users
    from storage.retention import prune_conversations
    rng = random.Random(3)
    vocabulary = ["river", "riverbank", "bread", "Café", "cheese", "lamp", "a_b", "100%",
                  "don't", '"quoted"', "NEAR", "AND", "owner:u1"]
    with open_db(home) as db:
        people = [None, *(users.add_user(db, n)["id"] for n in ("ann", "ben"))]
        for _n in range(120):
            said = [" ".join(rng.choices(vocabulary, k=rng.randint(1, 6))) for _ in range(3)]
            conversation, _ = store.store_transcript(
                db, [{"role": "user", "content": said[0]},
                     {"role": "assistant", "content": said[1]},
                     {"role": "user", "content": said[2]}], rng.choice(people))
            if rng.random() < 0.3:
                store.update_conversation(db, conversation, title=rng.choice(vocabulary))
            if rng.random() < 0.1:
                store.delete_conversation(db, conversation)

        def words_of(text: str) -> list[str]:  # what the index holds: words, no accents
            return re.findall(r"[a-z0-9]+", text.lower().replace("é", "e"))

        def holds(text: list[str], word: list[str], last: bool) -> bool:
            """A typed word ("a_b" is the words a, b) is a phrase; the search's last word may
            go on (it is a beginning)."""
            return bool(word) and any(
                text[i:i + len(word) - 1] == word[:-1]
                and (text[i + len(word) - 1].startswith(word[-1]) if last
                     else text[i + len(word) - 1] == word[-1])
                for i in range(len(text) - len(word) + 1))

        def reference(person, search: str) -> set[str]:
            found = set()
            for c in db.execute("SELECT id, title FROM conversations WHERE user_id IS ? "
                                "AND deleted_at IS NULL", [person]):
                texts = [r[0] for r in db.execute(
                    "SELECT content FROM messages WHERE conversation_id = ?", [c[0]])]
                wanted = search.split()
                if all(w.lower() in (c[1] or "").lower() for w in wanted) or any(
                        all(holds(words_of(text), words_of(w), n == len(wanted) - 1)
                            for n, w in enumerate(wanted))
                        for text in texts):
                    found.add(c[0])
            return found

        searches = ["river", "RIVERB", "cafe", "café bread", "cheese lamp", "a_b", "100%",
                    "don't", '"quoted"', "NEAR", "AND", "owner:u1", "u1", "bread lamp river",
                    "riv lamp", "lamp riv", "bre", "chee cheese"]
        for stage in ("stored", "pruned"):
            for person in people:
                for search in searches:
                    listed = store.list_conversations(db, person, limit=500, search=search)
                    assert {c["id"] for c in listed.rows} == reference(person, search), (
                        stage, person, search)
            assert store.list_conversations(db, people[1], search="river").rows
            prune_conversations(db, keep_days=10_000)  # erases the deleted ones
            assert db.execute("SELECT COUNT(*) FROM conversations WHERE deleted_at IS NOT NULL"
                              ).fetchone()[0] == 0
        indexed = db.execute("SELECT COUNT(*) FROM messages_fts WHERE messages_fts MATCH "
                             "'content:river*'").fetchone()[0]
        assert indexed == db.execute("SELECT COUNT(*) FROM messages WHERE content LIKE "
                                     "'%river%'").fetchone()[0]


def test_a_folder_written_atomically_is_whole_or_absent(tmp_path):
    """An adapter, a converted model or a finished stage is a folder another process may
    read at any moment: it appears complete, and a failure midway leaves nothing behind."""
    from storage import folder_atomically
    target = tmp_path / "adapters" / "ad-1"
    with pytest.raises(RuntimeError, match="killed midway"):
        with folder_atomically(target) as tmp:
            (tmp / "adapter_config.json").write_text("{}")
            assert not target.exists()  # nothing visible while it is written
            raise RuntimeError("killed midway")
    assert not target.exists() and list(target.parent.iterdir()) == []
    with folder_atomically(target) as tmp:
        (tmp / "adapter_config.json").write_text("{}")
    assert [p.name for p in target.parent.iterdir()] == ["ad-1"]
    with pytest.raises(OSError):  # an existing folder is replaced only when asked
        with folder_atomically(target) as tmp:
            (tmp / "other").write_text("x")
    assert [p.name for p in target.parent.iterdir()] == ["ad-1"]
    with folder_atomically(target, replace=True) as tmp:
        (tmp / "other").write_text("x")
    assert sorted(p.name for p in target.iterdir()) == ["other"]
