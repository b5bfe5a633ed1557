"""Seeding for bench/storage.py: fills a fresh database with a year's shape of feedback (users,
conversations with regenerations and edits, adapters, ratings, corrections, flags, scores and
side-by-side picks) by bulk inserts."""

import json
import random
import sys
from datetime import datetime, timedelta, timezone

from storage import Home, open_db
from storage.db import transaction

WORDS = ("time person year way day thing man world life hand part child eye woman place "
         "work week case point government company number group problem fact water river "
         "mountain city country language music history science garden kitchen recipe bread "
         "cheese coffee engine planet star ocean forest winter summer train bridge castle "
         "computer program bug test server database network window letter story poem").split()
VERBS = "explain describe compare list summarise translate fix improve write plan".split()
PERSONAL = ["my email is jo.kim{n}@example.org", "call me on +1 415-555-{n:04d}",
            "my card 4111 1111 1111 1111 was declined", "the server 10.0.{a}.{b} is down"]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def _question(rng: random.Random, asked: list[str]) -> str:
    roll = rng.random()
    if asked and roll < 0.08:
        return rng.choice(asked)                          # asked before, word for word
    if asked and roll < 0.12:
        return rng.choice(asked).rstrip(".?") + ", please?"  # nearly
    text = (f"Can you {rng.choice(VERBS)} the {rng.choice(WORDS)} of the {rng.choice(WORDS)} "
            f"{' '.join(rng.choice(WORDS) for _ in range(rng.randint(3, 14)))}?")
    if rng.random() < 0.03:
        text += " By the way " + rng.choice(PERSONAL).format(n=rng.randrange(10000),
                                                               a=rng.randrange(256),
                                                               b=rng.randrange(256))
    asked.append(text) if len(asked) < 5000 else asked.__setitem__(rng.randrange(5000), text)
    return text


def seed(home: Home, answers: int, rng: random.Random) -> dict:
    """Fill a fresh database with `answers` answers of a year's shape; returns what it made."""
    now = datetime.now(timezone.utc)
    start = now - timedelta(days=365)
    stamp = lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"  # noqa: E731
    made = {"answers": 0, "conversations": 0, "ratings": 0, "corrections": 0, "flags": 0,
            "scores": 0, "comparisons": 0, "users": 0}
    with open_db(home) as db:
        with transaction(db):
            people = [("user", 0.95), ("curator", 0.04), ("admin", 0.01)]
            n_users = max(10, answers // 400)
            for i in range(n_users):
                role = rng.choices([p for p, _ in people], [w for _, w in people])[0]
                role = "admin" if i == 0 else role  # a home always has one admin
                db.execute("INSERT INTO users (name, role, consent) VALUES (?, ?, ?)",
                           [f"user{i}", role, int(rng.random() > 0.01)])
            made["users"] = n_users
            curators = [r[0] for r in db.execute(
                "SELECT id FROM users WHERE role != 'user'")] or [None]
            ids = [None] * 20
            for i in range(20):
                ids[i] = f"ad-{i:02d}"
                db.execute("INSERT INTO adapters (id, base_model, method, status, path, "
                           "created_at, run_id) VALUES (?, 'smollm2', 'sft', ?, ?, ?, ?)",
                           [ids[i], "active" if i == 19 else "retired", f"/nowhere/{ids[i]}",
                            stamp(start + timedelta(days=365 * i / 20)), f"run-{i:02d}"])
                db.execute("INSERT INTO training_runs (id, status, base_model, method, "
                           "started_at, metrics, examples) VALUES (?, 'succeeded', 'smollm2', "
                           "'sft', ?, ?, ?)",
                           [f"run-{i:02d}", stamp(start + timedelta(days=365 * i / 20)),
                            json.dumps({"loss_curve": [2.0 - 0.01 * s for s in range(100)]}),
                            rng.randrange(1000, 50000)])
                for _e in range(5):
                    db.execute("INSERT INTO adapter_events (adapter_id, event, detail) "
                               "VALUES (?, 'served', '')", [ids[i]])
        asked: list[str] = []
        step = timedelta(days=365) / answers
        moment = start
        batch_size = 2000
        while made["answers"] < answers:
            convs, msgs, rates, corrs, flags, picks = [], [], [], [], [], []
            while made["answers"] < answers and len(msgs) < batch_size * 2:
                conv = f"conv-{made['conversations']:09d}"
                owner = rng.randrange(1, n_users + 1)
                system = "Be concise." if rng.random() < 0.2 else None
                convs.append((conv, owner, system, stamp(moment)))
                made["conversations"] += 1
                parent = None
                for turn in range(rng.choice([1, 1, 1, 2, 2, 3, 4])):
                    moment += step
                    when = stamp(moment)
                    serving = ids[min(19, int((moment - start) / timedelta(days=365) * 20))]
                    adapter = None if rng.random() < 0.1 else serving
                    question = f"msg-{len(msgs)}-{made['answers']}-{conv}"
                    msgs.append((question, conv, parent, "user", _question(rng, asked), None,
                                 when))
                    n_answers = 2 if rng.random() < 0.1 else 1  # a regeneration
                    given = []
                    for _k in range(n_answers):
                        answer = f"chatcmpl-{made['answers']:09d}"
                        given.append(answer)
                        text = sentence(rng, rng.randint(12, 60))
                        msgs.append((answer, conv, question, "assistant", text, adapter, when))
                        made["answers"] += 1
                        if rng.random() < 0.30:
                            rater = curators[rng.randrange(len(curators))] \
                                if rng.random() < 0.1 else owner
                            rating = "up" if rng.random() < 0.6 else "down"
                            rates.append((answer, rater, rating, None, when))
                            made["ratings"] += 1
                            if rng.random() < 0.05:  # a change of mind
                                rates.append((answer, rater, "down" if rating == "up" else "up",
                                              None, when))
                        if rng.random() < 0.05:
                            rates.append((answer, rng.choice(curators), None,
                                          rng.randint(1, 5), when))
                            made["scores"] += 1
                        if rng.random() < 0.02:
                            corrs.append((answer, rng.choice(curators),
                                          sentence(rng, rng.randint(8, 30)), when))
                            made["corrections"] += 1
                        if rng.random() < 0.01:
                            flags.append((answer, rng.choice(["pii", "unsafe"]), when))
                            made["flags"] += 1
                    if n_answers == 2 and rng.random() < 0.2:
                        picks.append((question, *given, rng.choice("ab"), when))
                        made["comparisons"] += 1
                    parent = msgs[-1][0]
                    if rng.random() < 0.05 and turn == 0:  # an edited first question: a branch
                        edit = f"msg-edit-{made['answers']}"
                        msgs.append((edit, conv, None, "user", _question(rng, asked), None, when))
                        answer = f"chatcmpl-{made['answers']:09d}"
                        msgs.append((answer, conv, edit, "assistant", sentence(rng, 20),
                                     adapter, when))
                        made["answers"] += 1
            with transaction(db):
                db.conn.executemany("INSERT INTO conversations (id, user_id, system_prompt, "
                                    "created_at) VALUES (?, ?, ?, ?)", convs)
                db.conn.executemany("INSERT INTO messages (id, conversation_id, parent_id, role, "
                                    "content, adapter_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                    msgs)
                db.conn.executemany("INSERT INTO ratings (message_id, rater_id, rating, score, "
                                    "created_at) VALUES (?, ?, ?, ?, ?)", rates)
                db.conn.executemany("INSERT INTO corrections (message_id, author_id, content, "
                                    "created_at) VALUES (?, ?, ?, ?)", corrs)
                db.conn.executemany("INSERT INTO flags (message_id, kind, created_at) "
                                    "VALUES (?, ?, ?)", flags)
                db.conn.executemany("INSERT INTO comparisons (prompt_id, answer_a, answer_b, "
                                    "winner, created_at) VALUES (?, ?, ?, ?, ?)", picks)
            print(f"\rseeded {made['answers']:,} answers", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        db.execute("ANALYZE")
    return made


def a_days_feedback(home: Home, rated: int, rng: random.Random) -> dict:
    """What a day brings to a seeded home, written as the server writes it (storage.chat, a
    transaction per turn): `rated` new one-turn conversations whose answers are rated (60%
    up), 2% of them corrected; one question in eight repeats or nearly repeats one asked
    before. For the nightly export after it (bench/storage.py `export_kto_next_night`)."""
    from storage import chat as store
    corrections = 0
    with open_db(home) as db:
        asked = [r[0] for r in db.execute(
            "SELECT content FROM messages WHERE role = 'user' ORDER BY random() LIMIT 5000")]
        users = [r[0] for r in db.execute(
            "SELECT id FROM users WHERE consent = 1 AND disabled = 0")]
        curators = [r[0] for r in db.execute("SELECT id FROM users WHERE role != 'user'")]
        curators = curators or [None]
        for _ in range(rated):
            owner = rng.choice(users)
            with transaction(db):
                conversation = store.create_conversation(db, user_id=owner)
                question = store.add_message(db, conversation, "user", _question(rng, asked))
            with transaction(db):
                answer = store.add_message(db, conversation, "assistant",
                                           sentence(rng, rng.randint(12, 60)), question,
                                           adapter_id="ad-19")
            store.rate(db, answer, "up" if rng.random() < 0.6 else "down", rater_id=owner)
            if rng.random() < 0.02:
                store.add_correction(db, answer, sentence(rng, rng.randint(8, 30)),
                                     author_id=rng.choice(curators))
                corrections += 1
    return {"rated_answers": rated, "corrections": corrections}
