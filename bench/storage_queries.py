"""Timed reads for bench/storage.py: every review-queue filter, the paged lists and search, the
registry, plots and A/B report, a chat turn's writes, the queries of before (old_storage.py),
and the page's own endpoints, each as p50 and p95 of repeated calls."""

import itertools
import random
import statistics
import time

from bench import old_storage as old  # the queries of before, for comparison
from bench.storage_seeding import WORDS, sentence
from storage import Home, ab, activity, adapters, open_db, review, runs, users
from storage import chat as store

FILTERS = {"rating": ["any", "down", "up", "unrated"], "adapter": ["any", "base", "ADAPTER"],
           "since": [None, "SINCE"], "reviewed": ["any", "no", "yes"]}


def timed(fn, repeats: int) -> tuple[dict, object]:
    """p50 and p95 (ms) of `repeats` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return {"p50_ms": round(statistics.median(times), 2), "p95_ms": round(p95, 2),
            "calls": repeats}, result


def plan_uses_index(plan: list[str]) -> bool:
    """Whether a queue page reads `judgements` through a queue index, with no sort."""
    return (any("USING INDEX judgements_queue" in p for p in plan)
            and not any("TEMP B-TREE" in p or p.startswith("SCAN") for p in plan))


def queue_queries(home: Home, repeats: int) -> dict:
    """Every filter combination of the review queue: first page and next page."""
    out, worst = {}, {"first": 0.0, "next": 0.0}
    with open_db(home) as db:
        since = db.execute("SELECT date(MAX(created_at), '-30 days') FROM judgements").fetchone()[0]
        adapter = db.execute("SELECT id FROM adapters ORDER BY created_at DESC LIMIT 1 OFFSET 3"
                             ).fetchone()[0]
        plans_ok = True
        for rating, adapter_f, since_f, reviewed in itertools.product(*FILTERS.values()):
            kwargs = {"rating": rating, "adapter": adapter if adapter_f == "ADAPTER" else adapter_f,
                      "since": since if since_f else None, "reviewed": reviewed}
            name = "/".join(str(v) for v in (rating, adapter_f, since_f or "-", reviewed))
            first, page = timed(lambda: review.review_queue(db, **kwargs), repeats)
            row = {"first": first, "rows": len(page.rows)}
            if page.next:
                row["next"], _ = timed(lambda: review.review_queue(db, **kwargs,
                                                                   after=page.next), repeats)
            out[name] = row
            worst["first"] = max(worst["first"], first["p95_ms"])
            worst["next"] = max(worst["next"], row.get("next", {"p95_ms": 0})["p95_ms"])
            # The plan SQLite picks, read off SQLite itself, for first and next pages.
            for next_page in (False, True):
                plan = review.explain_queue(db, **kwargs, next_page=next_page)
                plans_ok &= plan_uses_index(plan)
    return {"combinations": len(out), "worst_p95_ms": worst, "plans_use_queue_indexes": plans_ok,
            "example_plan": plan, "each": out}


def list_queries(home: Home, repeats: int) -> dict:
    with open_db(home) as db:
        busiest = db.execute("SELECT user_id FROM conversations GROUP BY user_id "
                             "ORDER BY COUNT(*) DESC LIMIT 1").fetchone()[0]
        out = {}
        for name, fetch in {
                "conversations": lambda after: store.list_conversations(db, busiest, after=after),
                "users": lambda after: users.list_users(db, after=after),
                "adapters": lambda after: adapters.page(db, limit=5, after=after),
                "adapter_events": lambda after: adapters.events(db, limit=20, after=after),
                "runs": lambda after: runs.page(db, limit=5, after=after)}.items():
            first, page = timed(lambda: fetch(None), repeats)
            out[name] = {"first": first}
            if page.next:
                out[name]["next"], _ = timed(lambda: fetch(page.next), repeats)
        # The list's search (titles, and every message through the FTS index): a word in
        # many messages, two words, a word in none (the whole history is looked through),
        # and the first page without a search, the baseline the ratios are to.
        out["conversations_owned"] = db.execute(
            "SELECT COUNT(*) FROM conversations WHERE user_id = ?", [busiest]).fetchone()[0]
        messages = db.execute("SELECT COUNT(*) FROM messages WHERE conversation_id IN "
                              "(SELECT id FROM conversations WHERE user_id = ?)",
                              [busiest]).fetchone()[0]
        out["messages_owned"] = messages
        for name, words in {"search_common_word": WORDS[0],
                            "search_two_words": f"{WORDS[10]} {WORDS[20]}",
                            "search_absent_word": "zyzzyva"}.items():
            out[name], found = timed(
                lambda: store.list_conversations(db, busiest, search=words), repeats)
            out[name]["found"] = len(found.rows)
            out[name]["ratio_to_no_search"] = round(
                out[name]["p50_ms"] / out["conversations"]["first"]["p50_ms"], 1)
        ab_start = db.execute("SELECT datetime(MAX(created_at), '-14 days') FROM judgements"
                              ).fetchone()[0].replace(" ", "T") + ".000Z"
        test = {"id": 0, "candidate_id": "ad-19", "share": 0.2, "started_at": ab_start,
                "ended_at": None, "reason": ""}

        def registry():
            return (adapters.page(db, limit=50), review.adapter_ratings(db),
                    runs.page(db, limit=10))
        out["registry"], _ = timed(registry, repeats)
        out["thumbs_plot"], data = timed(lambda: activity.over_time(db), repeats)
        out["thumbs_plot"]["points"] = len(data.thumbs)
        out["ab_report_14_days"], report = timed(lambda: ab.report(db, test), repeats)
        out["ab_report_14_days"]["answers"] = report["candidate"]["answers"] + \
            report["control"]["answers"]
    return out


def message_writes(home: Home, turns: int = 2000) -> dict:
    """What the search index costs each chat turn (a question and an answer): the same
    inserts with the index's trigger and without it, each in a transaction rolled back, so
    the database is left as it was."""
    rng = random.Random(1)
    with open_db(home) as db:
        conversations = [r[0] for r in db.execute(
            "SELECT id FROM conversations ORDER BY random() LIMIT ?", [turns])]
        trigger = db.execute("SELECT sql FROM sqlite_master WHERE name = "
                             "'messages_fts_insert'").fetchone()[0]

        def write(drop: bool) -> float:
            db.execute("BEGIN IMMEDIATE")
            try:
                if drop:
                    db.execute("DROP TRIGGER messages_fts_insert")
                started = time.perf_counter()
                for n, conversation in enumerate(conversations):
                    db.execute("INSERT INTO messages (id, conversation_id, role, content) "
                               "VALUES (?, ?, 'user', ?)", [f"bench-q{n}", conversation,
                                                            sentence(rng, 12)])
                    db.execute("INSERT INTO messages (id, conversation_id, parent_id, role, "
                               "content) VALUES (?, ?, ?, 'assistant', ?)",
                               [f"bench-a{n}", conversation, f"bench-q{n}", sentence(rng, 60)])
                return (time.perf_counter() - started) * 1000 / len(conversations)
            finally:
                db.execute("ROLLBACK")
        assert trigger
        indexed = [write(False) for _ in range(3)]
        bare = [write(True) for _ in range(3)]
    return {"turns": len(conversations), "ms_per_turn_indexed": round(min(indexed), 3),
            "ms_per_turn_without_index": round(min(bare), 3),
            "ratio": round(min(indexed) / min(bare), 2)}


def old_queries(home: Home, repeats: int) -> dict:
    """The same questions asked the way Flywheel asked them before (old_storage.py)."""
    with open_db(home) as db:
        ab_start = db.execute("SELECT datetime(MAX(created_at), '-14 days') FROM judgements"
                              ).fetchone()[0].replace(" ", "T") + ".000Z"
        test = {"candidate_id": "ad-19", "started_at": ab_start, "ended_at": None}
        out = {}
        out["review_queue_first_200"], _ = timed(lambda: old.review_queue(db), repeats)
        out["adapter_ratings"], _ = timed(lambda: old.adapter_ratings(db), repeats)
        out["thumbs_plot"], points = timed(lambda: old.thumbs_up_over_time(db), repeats)
        out["thumbs_plot"]["points"] = len(points)
        out["ab_report_14_days"], _ = timed(lambda: old.ab_report(db, test), repeats)
    return out


def page_endpoints(home: Home, repeats: int) -> dict:
    """The curator's and admin's page calls through `gradio_client`, as the browser makes
    them, against `flywheel serve` on this database (the embedded model)."""
    from gradio_client import Client

    from assistant.server import ServeConfig, serve_in_thread
    with open_db(home) as db:
        admin = db.execute("SELECT name FROM users WHERE role = 'admin' LIMIT 1").fetchone()[0]
        key, _ = users.create_key(db, admin)
    out = {}
    with serve_in_thread(home, ServeConfig(port=0)) as (url, _):
        page = Client(url, verbose=False, headers={"Authorization": f"Bearer {key}"})
        page.predict(api_name="/adapters")  # the first call of a session sets it up: not timed
        out["review_queue"], _ = timed(lambda: page.predict(
            "any", "any", "", "no", api_name="/review_queue"), repeats)
        out["review_queue_next"], _ = timed(lambda: page.predict(
            "any", "any", "", "no", api_name="/review_queue_next"), repeats)
        out["registry_and_plots"], _ = timed(lambda: page.predict(api_name="/adapters"), repeats)
    return out
