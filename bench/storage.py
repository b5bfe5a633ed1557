"""Storage at the size a year of feedback reaches: every page query, the registry, the
plots, the A/B report, selection and the dataset build, export, and concurrent feedback
writes, timed in one run, with the queries of before (kept in `old_storage.py` beside this script)
timed beside the new ones on the same database.

    python bench/storage.py                       # 100,000 answers
    python bench/storage.py --answers 1000000     # a year of a busy deployment
    python bench/storage.py --home DIR --keep     # keep (and reuse) the seeded database

The database is seeded by bulk inserts with the shape a team makes: users (a few curators
and admins), multi-turn conversations over a year with regenerations and edited turns,
20 adapters taking turns in production, 30% of answers rated (some twice), 2% corrected,
1% flagged, 5% scored, a few side-by-side picks, and prompts that repeat (exactly or nearly)
and carry personal data now and then. Every trigger that keeps `judgements` current runs
as it does in production.

Prints a table and JSON (p50 and p95 of `--repeats` calls per query, in milliseconds);
`--out FILE` also writes the JSON. Parts can be left out with `--skip old,build,export,...`.
"""

import argparse
import importlib.util
import itertools
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

# This file's name is the package's: the project, not bench/, must come first on the path.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from storage import Home, ab, activity, adapters, init_db, open_db, review, runs, users  # noqa: E402  # noqa: E402
from storage import chat as store  # noqa: E402
from storage.db import Checkpointer, transaction  # noqa: E402

_spec = importlib.util.spec_from_file_location("old_storage", HERE / "old_storage.py")
old = importlib.util.module_from_spec(_spec)  # the queries of before, for comparison
_spec.loader.exec_module(old)

WORDS = ("time person year way day thing man world life hand part child eye woman place "
         "work week case point government company number group problem fact water river "
         "mountain city country language music history science garden kitchen recipe bread "
         "cheese coffee engine planet star ocean forest winter summer train bridge castle "
         "computer program bug test server database network window letter story poem").split()
VERBS = "explain describe compare list summarise translate fix improve write plan".split()
PERSONAL = ["my email is jo.kim{n}@example.org", "call me on +1 415-555-{n:04d}",
            "my card 4111 1111 1111 1111 was declined", "the server 10.0.{a}.{b} is down"]
FILTERS = {"rating": ["any", "down", "up", "unrated"], "adapter": ["any", "base", "ADAPTER"],
           "since": [None, "SINCE"], "reviewed": ["any", "no", "yes"]}


# ---- seeding ---------------------------------------------------------------------------------

def _sentence(rng: random.Random, n: int) -> str:
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
                        text = _sentence(rng, rng.randint(12, 60))
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
                                          _sentence(rng, rng.randint(8, 30)), when))
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
                        msgs.append((answer, conv, edit, "assistant", _sentence(rng, 20),
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


# ---- timing ----------------------------------------------------------------------------------

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
                                                            _sentence(rng, 12)])
                    db.execute("INSERT INTO messages (id, conversation_id, parent_id, role, "
                               "content) VALUES (?, ?, ?, 'assistant', ?)",
                               [f"bench-a{n}", conversation, f"bench-q{n}", _sentence(rng, 60)])
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


# ---- the pipeline, in child processes (each one's own peak memory) ---------------------------

def child(args: list[str]) -> dict:
    """Run this script's `--stage` in a new process: its JSON (with its own peak memory)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "seconds": round(time.perf_counter() - started, 1)}


def peak_rss_mb() -> int:
    """This process's peak resident memory. VmHWM, not getrusage's ru_maxrss: Linux carries
    ru_maxrss over from the parent across fork and exec, so a child would report the
    bench's own peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def stage(name: str, home: Home, cache: str | None, dedup: bool, out: str | None) -> dict:
    """One pipeline stage in this (child) process; prints its JSON."""
    from storage.embeddings import EmbeddingCache
    from trainer import selection
    from trainer.dataset import MINILM, DataConfig, build_to, default_embedder
    started = time.perf_counter()
    with open_db(home) as db:
        if name == "select":
            counts = {"sft": 0, "dpo": 0, "kto": 0}
            for fmt, _ in selection.examples(db):
                counts[fmt] += 1
            return {"examples": counts, "stage_seconds": round(time.perf_counter() - started, 1)}
        if name == "old-select":
            counts = {fmt: len(rows) for fmt, rows in old.select(db).items()}
            return {"examples": counts, "stage_seconds": round(time.perf_counter() - started, 1)}
        if name == "export":  # the command itself, in this process
            from flywheel.cli import main as flywheel
            argv = ["export", "--home", str(home.root), "--format", "kto", "--out", out,
                    "--report", out + ".json"] + ([] if dedup else ["--no-dedup"])
            assert flywheel(argv) == 0
            report = json.loads(Path(out + ".json").read_text())
            return {"rows": sum(1 for _ in open(out)), "dedup": dedup,
                    "pipeline_seconds": report["seconds"],
                    "write_rows_per_second": report["write_rows_per_second"]}
        if name == "dedup-check":
            return dedup_check(db, cache, int(os.environ.get("DEDUP_CHECK_EXAMPLES", 100_000)))
        embed, store_ = None, None
        if dedup:
            store_ = EmbeddingCache(Path(cache), MINILM)
            embed = default_embedder(store_)
        with tempfile.TemporaryDirectory() as tmp:
            manifest = build_to(db, Path(tmp), DataConfig(deduplicate=dedup), embed=embed,
                                progress=True)
        if store_:
            store_.close()
        return {"formats": {f: {"train": m["train"], "validation": m["validation"]}
                            for f, m in manifest["formats"].items()},
                "dropped": manifest["dropped"], "scrubbed": manifest["scrubbed"],
                "stage_seconds": round(time.perf_counter() - started, 1)}


def dedup_check(db, cache: str, n: int) -> dict:
    """Near-duplicate decisions on the first `n` KTO examples (MiniLM embeddings of prompt
    and answer, cached), made by exact search and by the HNSW index: how often they agree."""
    import numpy as np

    from storage.embeddings import EmbeddingCache
    from trainer import selection
    from trainer.dataset import MINILM, _Cleaner, _prompt_text, default_embedder
    from trainer.dedup import NearDuplicates
    examples, clean = [], _Cleaner(None, 1024)  # scrubbed as the pipeline scrubs them
    for fmt, e in selection.examples(db, formats=["kto"]):
        for _, kept in clean.many([(fmt, e)]):  # none when it is broken
            examples.append((_prompt_text(kept), kept["completion"][0]["content"],
                             kept["conversation_id"]))
        if len(examples) == n:
            break
    store_ = EmbeddingCache(Path(cache), MINILM)
    embed = default_embedder(store_)
    started = time.perf_counter()
    prompts, answers = [], []
    for start in range(0, len(examples), 4096):
        chunk = examples[start:start + 4096]
        prompts.append(embed([p for p, _, _ in chunk]))
        answers.append(embed([a for _, a, _ in chunk]))
        print(f"\rembedded {start + len(chunk):,} of {len(examples):,}", end="",
              file=sys.stderr, flush=True)
    embed_seconds = time.perf_counter() - started
    store_.close()
    prompts, answers = np.concatenate(prompts), np.concatenate(answers)
    decisions, seconds = {}, {}
    for name, limit in (("exact", 10**9), ("hnsw", 50_000)):
        index, out = NearDuplicates(0.95, 1, exact_limit=limit), []
        started = time.perf_counter()
        for start in range(0, len(examples), 2048):
            out += index.add(prompts[start:start + 2048], [answers[start:start + 2048]],
                             [c for _, _, c in examples[start:start + 2048]])
        decisions[name], seconds[name] = out, round(time.perf_counter() - started, 1)
    exact, hnsw = decisions["exact"], decisions["hnsw"]
    dropped = {k: sum(g is None for g in v) for k, v in decisions.items()}
    return {"examples": len(examples), "embed_seconds": round(embed_seconds, 1),
            "search_seconds": seconds, "near_duplicates_dropped": dropped,
            "same_decision": round(sum(a == b for a, b in zip(exact, hnsw)) / len(exact), 5),
            "kept_by_one_dropped_by_other": sum((a is None) != (b is None)
                                                for a, b in zip(exact, hnsw))}


# ---- the page, through its own endpoints -----------------------------------------------------

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


# ---- concurrent writers ----------------------------------------------------------------------

def writers(home: Home, threads: int, seconds: float, answers: list[str],
            during=None) -> dict:
    """`threads` writers send feedback as fast as they can for `seconds`, each with its own
    connection, as the server's request threads do, beside the server's checkpointer. Counts
    acknowledged writes and errors, then checks every acknowledged rating is in the database.
    `during(acked)` runs in the middle (a backup), with the list of (rating id, time)
    acknowledged so far."""
    acked: list[tuple[int, float]] = []
    errors: list[str] = []
    stop = time.perf_counter() + seconds
    lock = threading.Lock()

    def work(n: int) -> None:
        rng = random.Random(n)
        with open_db(home) as db:
            while time.perf_counter() < stop:
                answer = rng.choice(answers)
                try:
                    ids = store.record_feedback(db, answer, rng.choice(["up", "down"]),
                                                reasons=["clear"], comment=f"w{n}")
                except Exception as exc:  # counted, not raised: the figure is the count
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                with lock:
                    acked.append((ids["rating_id"], time.perf_counter()))

    with open_db(home) as db:
        before = db.execute("SELECT COUNT(*) FROM ratings").fetchone()[0]
    checkpointer = Checkpointer(home).start()  # as `flywheel serve` runs one
    started = time.perf_counter()
    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    extra = None
    if during is not None:
        time.sleep(seconds / 3)  # a benchmark's schedule, not a test's wait
        extra = during(list(acked))
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - started
    checkpointer.stop()
    with open_db(home) as db:
        after = db.execute("SELECT COUNT(*) FROM ratings").fetchone()[0]
        ids = [i for i, _ in acked]
        present = sum(db.execute(
            f"SELECT COUNT(*) FROM ratings WHERE id IN ({', '.join('?' * len(ids[s:s + 500]))})",
            ids[s:s + 500]).fetchone()[0] for s in range(0, len(ids), 500))
    return {"writers": threads, "writes": len(acked),
            "writes_per_second": round(len(acked) / elapsed),
            "errors": len(errors), "first_error": errors[0] if errors else None,
            "lost": len(acked) - present, "rows_added": after - before, "during": extra}


def backup_during_writes(home: Home, answers: list[str], seconds: float) -> dict:
    """`flywheel backup` while 16 writers write; restored into a new home and checked."""
    target = Path(tempfile.mkdtemp(prefix="flywheel-backup-")) / "backup"
    restored = Home.resolve(tempfile.mkdtemp(prefix="flywheel-restored-"))

    def take(acked_before):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "flywheel.cli", "backup", "--home",
                               str(home.root), str(target)], capture_output=True, text=True)
        return {"acked_before_backup": acked_before, "backup_seconds":
                round(time.perf_counter() - started, 1), "exit": done.returncode,
                "output": (done.stdout + done.stderr).strip()[-400:]}

    result = writers(home, 16, seconds, answers, during=take)
    info = result.pop("during")
    done = subprocess.run([sys.executable, "-m", "flywheel.cli", "restore", "--home",
                           str(restored.root), str(target)], capture_output=True, text=True)
    acked_ids = [i for i, _ in info.pop("acked_before_backup")]
    with open_db(restored) as db:
        present = set()
        for s in range(0, len(acked_ids), 500):
            chunk = acked_ids[s:s + 500]
            present |= {r[0] for r in db.execute(
                f"SELECT id FROM ratings WHERE id IN ({', '.join('?' * len(chunk))})", chunk)}
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    return {**info, "writes_during": result, "restore_exit": done.returncode,
            "restore_output": (done.stdout + done.stderr).strip()[-400:],
            "acknowledged_before_backup": len(acked_ids),
            "found_after_restore": len(present & set(acked_ids)), "integrity": integrity}


# ---- main ------------------------------------------------------------------------------------

def table(report: dict) -> str:
    q, lists, o = report.get("queue", {}), report.get("lists", {}), report.get("old", {})
    lines = [f"{'measure':<42} {'new p95 ms':>12} {'old p95 ms':>12}"]

    def line(name, new, old_=None):
        lines.append(f"{name:<42} {new:>12} {old_ if old_ is not None else '':>12}")
    if q:
        line(f"review queue, worst of {q['combinations']} filters, first",
             q["worst_p95_ms"]["first"], o.get("review_queue_first_200", {}).get("p95_ms"))
        line("review queue, worst, next page", q["worst_p95_ms"]["next"])
    for name in ("conversations", "users", "adapters", "adapter_events", "runs"):
        if name in lists:
            line(f"{name}, first / next page",
                 f"{lists[name]['first']['p95_ms']} / "
                 f"{lists[name].get('next', {}).get('p95_ms', '-')}")
    for name in ("search_common_word", "search_two_words", "search_absent_word"):
        if name in lists:
            line(f"{name} ({lists[name]['found']} found)", lists[name]["p95_ms"])
    if "registry" in lists:
        line("registry (adapters, thumbs, runs)", lists["registry"]["p95_ms"],
             o.get("adapter_ratings", {}).get("p95_ms"))
        line(f"thumbs plot ({lists['thumbs_plot']['points']} points; old "
             f"{o.get('thumbs_plot', {}).get('points', '-')})", lists["thumbs_plot"]["p95_ms"],
             o.get("thumbs_plot", {}).get("p95_ms"))
        line("A/B report, 14-day window", lists["ab_report_14_days"]["p95_ms"],
             o.get("ab_report_14_days", {}).get("p95_ms"))
    if "message_writes" in report:
        w = report["message_writes"]
        line("a chat turn's 2 messages, search index on / off",
             f"{w['ms_per_turn_indexed']} / {w['ms_per_turn_without_index']}")
    for name, r in report.get("page", {}).items():
        line(f"page through gradio_client: {name}", r["p95_ms"])
    for name in ("old-select", "select", "build", "build_again_warm_cache", "build_no_dedup",
                 "export_kto", "export_kto_no_dedup", "dedup_check"):
        r = report.get(name)
        if r and "error" not in r:
            lines.append(f"{name:<42} {r['seconds']:>10} s {r.get('peak_rss_mb', '?'):>8} MB")
    for w in report.get("writers", []):
        lines.append(f"{w['writers']:>2} writers: {w['writes_per_second']} writes/s, "
                     f"{w['errors']} errors, {w['lost']} lost")
    b = report.get("backup_during_writes")
    if b:
        lines.append(f"backup during writes: {b['found_after_restore']} of "
                     f"{b['acknowledged_before_backup']} acknowledged rows found after restore")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=100_000)
    parser.add_argument("--home", help="the database to seed, or reuse with --keep")
    parser.add_argument("--keep", action="store_true", help="reuse --home if already seeded")
    parser.add_argument("--repeats", type=int, default=7, help="calls per query")
    parser.add_argument("--old-repeats", type=int, default=2, help="calls per old query")
    parser.add_argument("--skip", default="", help="comma list of: queue, lists, "
                        "message-writes, old, "
                        "old-select, select, build, build-no-dedup, export, export-dedup, page, "
                        "writers, backup")
    parser.add_argument("--only", default="", help="extra parts run only when named: "
                        "dedup-check (exact vs HNSW decisions on DEDUP_CHECK_EXAMPLES=100000 "
                        "KTO examples; embeds them all, about an hour on two cores)")
    parser.add_argument("--cache", help="embedding cache file for the build (default: the "
                        "home's, empty in a new home, so the first build embeds everything)")
    parser.add_argument("--writer-seconds", type=float, default=10.0)
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--no-dedup", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    home = Home.resolve(args.home or tempfile.mkdtemp(prefix="flywheel-storage-"))
    if args.stage:
        result = stage(args.stage, home, args.cache, not args.no_dedup, args.out)
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
        return
    skip = set(filter(None, args.skip.split(",")))
    report: dict = {"answers": args.answers, "home": str(home.root)}
    init_db(home)
    with open_db(home) as db:
        seeded = db.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]
    if not (args.keep and seeded):
        if seeded:
            sys.exit(f"{home.root} already holds answers; use --keep or a new --home")
        started = time.perf_counter()
        report["seeded"] = seed(home, args.answers, random.Random(0))
        report["seed_seconds"] = round(time.perf_counter() - started, 1)
    with open_db(home) as db:
        report["database_mb"] = round(home.db_path.stat().st_size / 2**20)
        report["rated_answers"] = db.execute(
            "SELECT COUNT(*) FROM judgements WHERE rating IS NOT NULL").fetchone()[0]
        answer_ids = [r[0] for r in db.execute(
            "SELECT message_id FROM judgements ORDER BY created_at DESC LIMIT 50000")]
    if "queue" not in skip:
        report["queue"] = queue_queries(home, args.repeats)
    if "lists" not in skip:
        report["lists"] = list_queries(home, args.repeats)
    if "message-writes" not in skip:
        report["message_writes"] = message_writes(home)
    if "old" not in skip:
        report["old"] = old_queries(home, args.old_repeats)
    cache = args.cache or str(home.root / "cache" / "embeddings.db")  # what export reads too
    for name in ("old-select", "select"):
        if name not in skip:
            report[name] = child(["--home", str(home.root), "--stage", name])
    if "build" not in skip:
        report["build"] = child(["--home", str(home.root), "--stage", "build", "--cache", cache])
        report["build_again_warm_cache"] = child(["--home", str(home.root), "--stage", "build",
                                                  "--cache", cache])
    if "build-no-dedup" not in skip:
        report["build_no_dedup"] = child(["--home", str(home.root), "--stage", "build",
                                          "--no-dedup"])
    if "dedup-check" in args.only:
        report["dedup_check"] = child(["--home", str(home.root), "--stage", "dedup-check",
                                       "--cache", cache])
    if "export" not in skip:
        from assistant import models
        models.resolve(None, home)  # a home that has served has its model converted already
        out = str(Path(tempfile.mkdtemp()) / "kto.jsonl")
        if "export-dedup" not in skip:  # a cold cache embeds every text first
            report["export_kto"] = child(["--home", str(home.root), "--stage", "export",
                                          "--out", out])
        report["export_kto_no_dedup"] = child(["--home", str(home.root), "--stage", "export",
                                               "--out", out, "--no-dedup"])
    if "page" not in skip:
        report["page"] = page_endpoints(home, args.repeats)
    if "writers" not in skip:
        report["writers"] = [writers(home, n, args.writer_seconds, answer_ids) for n in (1, 16)]
    if "backup" not in skip:
        report["backup_during_writes"] = backup_during_writes(home, answer_ids,
                                                              args.writer_seconds * 3)
    print(table(report), file=sys.stderr)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
