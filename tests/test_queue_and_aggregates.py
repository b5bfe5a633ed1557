"""A year of feedback on the review queue: the queue and every growing list paged by keyset
through the indexes made for them, and the plots and A/B report aggregated in SQL. Each is
checked against a reference computed in Python from the raw ratings, corrections and flags
(tests/judgement_reference.py)."""

import random
from datetime import date, timedelta

import pytest

from assistant.plots import activity_figure
from storage import Home, ab, activity, adapters, init_db, open_db, paging, review, runs, users
from storage import chat as store
from storage.db import transaction
from tests.judgement_reference import reference

# ---- the review queue ------------------------------------------------------------------------

def busy_home(tmp_path, answers: int = 600) -> tuple[Home, list[str]]:
    """Answers over 60 days from three adapters and the base model, a third rated, some
    scored, corrected or flagged."""
    home = Home.resolve(tmp_path / "busy")
    init_db(home)
    rng = random.Random(1)
    with open_db(home) as db, transaction(db):
        for i in range(3):
            db["adapters"].insert({"id": f"ad-{i}", "base_model": "m", "method": "sft",
                                   "path": "/x", "created_at": f"2026-0{i + 1}-01T00:00:00Z"})
        ids = []
        for n in range(answers):
            day = (date(2026, 1, 1) + timedelta(days=n * 60 // answers)).isoformat()
            when = f"{day}T{n % 24:02d}:00:00.{n:03d}Z"
            conv = f"c{n}"
            db.execute("INSERT INTO conversations (id, created_at) VALUES (?, ?)", [conv, when])
            db.execute("INSERT INTO messages (id, conversation_id, role, content, created_at) "
                       "VALUES (?, ?, 'user', 'q', ?)", [f"q{n}", conv, when])
            answer = f"a{n:04d}"
            db.execute("INSERT INTO messages (id, conversation_id, parent_id, role, content, "
                       "adapter_id, created_at) VALUES (?, ?, ?, 'assistant', 'a', ?, ?)",
                       [answer, conv, f"q{n}", rng.choice([None, "ad-0", "ad-1", "ad-2"]), when])
            ids.append(answer)
            if rng.random() < 0.35:
                store.rate(db, answer, rng.choice(["up", "down"]))
            if rng.random() < 0.08:
                store.rate(db, answer, None, score=rng.randint(1, 5))
            if rng.random() < 0.04:
                store.add_correction(db, answer, "better")
            if rng.random() < 0.04:
                store.set_flags(db, answer, ["pii"])
    return home, ids


def expected_queue(db, rating, adapter, since, reviewed) -> list[str]:
    ref = reference(db)
    rows = []
    deleted = {c["id"] for c in db["conversations"].rows_where("deleted_at IS NOT NULL")}
    for m in db["messages"].rows_where("role = 'assistant'"):
        if m["conversation_id"] in deleted:  # gone from the queue
            continue
        j = ref[m["id"]]
        done = bool(j["score"] or j["correction"] or j["flags"])
        if rating != "any" and (j["rating"] or "unrated") != rating:
            continue
        if adapter != "any" and m["adapter_id"] != (None if adapter == "base" else adapter):
            continue
        if since and m["created_at"] < since or reviewed != "any" and done != (reviewed == "yes"):
            continue
        rows.append(({"down": 0, None: 1, "up": 2}[j["rating"]], m["created_at"], m["id"]))
    rows.sort(key=lambda r: (r[1], r[2]), reverse=True)  # newest first,
    rows.sort(key=lambda r: r[0])                         # within each rank (a stable sort)
    return [r[2] for r in rows]


FILTER_CASES = [("any", "any", None, "any"), ("down", "any", None, "any"),
                ("unrated", "ad-1", None, "no"), ("up", "base", "2026-02-01", "any"),
                ("any", "ad-2", "2026-01-20", "yes"), ("any", "any", "2026-02-15", "no")]


@pytest.mark.parametrize("filters", FILTER_CASES)
def test_the_review_queue_pages_through_every_answer_once_in_order(tmp_path, filters):
    home, _ = busy_home(tmp_path)
    with open_db(home) as db:
        walked = list(paging.every(lambda after: review.review_queue(
            db, *filters, limit=37, after=after)))
        assert [r["id"] for r in walked] == expected_queue(db, *filters)
        assert len(walked) == len({r["id"] for r in walked})


def test_the_queue_counts_match_the_queue_and_leave_deleted_chats_out(tmp_path):
    home, _ = busy_home(tmp_path)
    with open_db(home) as db:
        for n in range(0, 600, 7):
            store.delete_conversation(db, f"c{n}")
        counts = review.queue_counts(db)
        for rating in ("down", "unrated", "up"):
            assert counts[rating] == len(expected_queue(db, rating, "any", None, "any")) > 0
        reviewed = len(expected_queue(db, "any", "any", None, "yes"))
        assert counts["reviewed"] == reviewed > 0
        assert sum(counts[r] for r in ("down", "unrated", "up")) == 600 - len(range(0, 600, 7))


def test_answers_written_while_paging_shift_no_page(tmp_path):
    home, ids = busy_home(tmp_path)
    with open_db(home) as db:
        first = review.review_queue(db, rating="unrated", limit=50)
        conv = store.create_conversation(db)
        q = store.add_message(db, conv, "user", "new")
        store.add_message(db, conv, "assistant", "newest", q)  # would lead the unrated ranks
        rest = list(paging.every(lambda after: review.review_queue(
            db, rating="unrated", limit=50, after=after or first.next)))
        seen = [r["id"] for r in first.rows + rest]
        assert len(seen) == len(set(seen)) and "newest" not in {r["content"] for r in rest}
        assert seen == expected_queue(db, "unrated", "any", None, "any")[1:]


def test_every_queue_filter_reads_through_its_index_without_sorting(tmp_path):
    home, _ = busy_home(tmp_path, answers=50)
    with open_db(home) as db:
        for rating in ("any", "down", "unrated"):
            for adapter in ("any", "base", "ad-1"):
                for since in (None, "2026-02-01"):
                    for reviewed in ("any", "yes", "no"):
                        for next_page in (False, True):
                            plan = review.explain_queue(db, rating, adapter, since, reviewed,
                                                        next_page)
                            assert any("USING INDEX judgements_queue" in p for p in plan), plan
                            assert not any("TEMP B-TREE" in p or p.startswith("SCAN")
                                           for p in plan), plan


def test_a_cursor_from_elsewhere_is_refused(home):
    with open_db(home) as db, pytest.raises(ValueError, match="not a page cursor"):
        review.review_queue(db, after="bm90IGpzb24")
    with open_db(home) as db, pytest.raises(ValueError, match="not a page cursor"):
        users.list_users(db, after=paging.encode(["a", "b"]))


# ---- aggregates -----------------------------------------------------------------------------

def test_thumbs_per_adapter_plot_and_ab_window_are_aggregated_right(tmp_path):
    home, _ = busy_home(tmp_path)
    with open_db(home) as db:
        ref = reference(db)
        messages = list(db["messages"].rows_where("role = 'assistant'"))
        per_adapter: dict = {}
        for m in messages:
            rating = ref[m["id"]]["rating"]
            if rating:
                per_adapter.setdefault(m["adapter_id"], {"up": 0, "down": 0})[rating] += 1
        got = review.adapter_ratings(db)
        assert {a: (v["up"], v["down"]) for a, v in got.items()} == \
            {a: (v["up"], v["down"]) for a, v in per_adapter.items()}

        # (the feedback was given today, so the plots' span runs from January to today)
        daily = activity.over_time(db, max_points=100_000)
        assert sum(p["up"] + p["down"] for p in daily.thumbs) == sum(
            v["up"] + v["down"] for v in per_adapter.values())
        assert daily.period == 1
        coarse = activity.over_time(db, max_points=40)
        assert len(coarse.thumbs) <= 40 and coarse.period > 1
        assert sum(p["up"] + p["down"] for p in coarse.thumbs) == sum(
            p["up"] + p["down"] for p in daily.thumbs)

        window = ("2026-02-01T00:00:00.000Z", "2026-02-10T23:59:59.999Z")
        test = {"candidate_id": "ad-1", "started_at": window[0], "ended_at": window[1]}
        report = ab.report(db, test)
        inside = [m for m in messages if window[0] <= m["created_at"] <= window[1]]
        candidate = [m for m in inside if m["adapter_id"] == "ad-1"]
        assert report["candidate"]["answers"] == len(candidate)
        assert report["control"]["answers"] == len(inside) - len(candidate)
        assert report["candidate"]["up"] == sum(ref[m["id"]]["rating"] == "up" for m in candidate)


def test_the_activity_figure_counts_each_answer_and_feedback_once_and_marks_promotions(
        tmp_path):
    home, ids = busy_home(tmp_path)
    with open_db(home) as db:
        review.record_comparison(db, "q0", ids[0], ids[1], "both_bad")
        adapters.promote(db, "ad-1")
        data = activity.over_time(db, max_points=1000)
        ratings = list(db["ratings"].rows)
        ref = reference(db)
        corrections = db["corrections"].count
    counts = {kind: sum(r[kind] for r in data.volume)
              for kind in ("answers", "thumbs", "score", "correction", "comparison")}
    assert counts == {"answers": len(ids), "thumbs": sum(bool(r["rating"]) for r in ratings),
                      "score": sum(bool(r["score"]) for r in ratings),
                      "correction": corrections, "comparison": 1}
    counted = [j["rating"] for j in ref.values() if j["rating"]]
    assert sum(p["up"] for p in data.thumbs) == counted.count("up")
    assert sum(p["down"] for p in data.thumbs) == counted.count("down")
    assert all(p["low"] <= p["rate"] <= p["high"] for p in data.thumbs)
    assert [(p["action"], p["adapter"]) for p in data.promotions] == [("promote", "ad-1")]

    # A long history is drawn in longer periods, never more points than asked for.
    with open_db(home) as db:
        coarse = activity.over_time(db, max_points=40)
    assert coarse.period > 1 and len(coarse.thumbs) <= 40 and len(coarse.volume) <= 40
    assert sum(r["answers"] for r in coarse.volume) == len(ids)

    figure = activity_figure(data)
    rate, answers, feedback = figure.axes
    promotion = [line for line in rate.lines if line.get_linestyle() == "--"]
    assert len(promotion) == 1  # the promotion's line, drawn through each panel
    assert len(answers.patches) == len(data.volume)  # a bar per day
    assert activity_figure(activity.Activity()) is None  # nothing answered: no figure


# ---- lists that grow -------------------------------------------------------------------------

def test_every_growing_list_pages_by_keyset(home):
    with open_db(home) as db:
        people = [users.add_user(db, f"u{i:02d}")["id"] for i in range(23)]
        for i in range(23):
            conv = store.create_conversation(db, user_id=people[0], title=f"t{i}")
            store.add_message(db, conv, "user", "hi")
        for i in range(12):
            db["adapters"].insert({"id": f"ad-{i:02d}", "base_model": "m", "method": "sft",
                                   "path": "/x"})
            adapters.record_event(db, f"ad-{i:02d}", "served")
            runs.start(db, base_model="m", method="sft", config={}, manifest={"count": i})
        listed = {
            "conversations": lambda after: store.list_conversations(db, people[0], 5, after),
            "users": lambda after: users.list_users(db, 5, after),
            "adapters": lambda after: adapters.page(db, 5, after),
            "events": lambda after: adapters.events(db, limit=5, after=after),
            "runs": lambda after: runs.page(db, 5, after)}
        walked = {name: list(paging.every(fetch)) for name, fetch in listed.items()}
        keys = [(c["updated_at"], c["id"]) for c in walked["conversations"]]
        assert keys == sorted(keys, reverse=True) and len(set(keys)) == 23
        assert [u["name"] for u in walked["users"]] == [f"u{i:02d}" for i in range(23)]
        assert [a["id"] for a in walked["adapters"]] == [f"ad-{i:02d}" for i in range(11, -1, -1)]
        assert len(walked["events"]) == 12 and len(walked["runs"]) == 12
        assert sorted(r["examples"] for r in walked["runs"]) == list(range(12))
        assert "manifest" not in walked["runs"][0]  # a page never parses manifests
