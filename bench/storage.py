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

This script runs the parts and prints the report; beside it, storage_seeding.py fills the
database, storage_queries.py times the reads, storage_stages.py runs the pipeline stages in
child processes, storage_writers.py the concurrent writers and the backup.
"""

import argparse
import json
import os
import random
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

# This file's name is the package's: the project, not bench/, must come first on the path.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from bench.storage_queries import (  # noqa: E402
    list_queries,
    message_writes,
    old_queries,
    page_endpoints,
    queue_queries,
)
from bench.storage_seeding import a_days_feedback, seed  # noqa: E402
from bench.storage_stages import child, peak_rss_mb, stage  # noqa: E402
from bench.storage_writers import backup_during_writes, writers  # noqa: E402
from storage import Home, init_db, open_db  # noqa: E402
from storage.embeddings import EmbeddingCache  # noqa: E402


def cached_texts(cache: str) -> int:
    """How many texts the embedding cache holds."""
    if not Path(cache).exists():
        return 0
    with closing(EmbeddingCache(Path(cache), model="")) as embeddings:
        return embeddings.size()


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
                 "export_kto", "export_kto_next_night", "export_kto_no_dedup",
                 "dedup_check"):
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
    parser.add_argument("--days-feedback", type=int, default=1000,
                        help="rated answers that arrive before the next night's export "
                        "(default 1000; a year of 340,000 answers, 100,000 of them rated, "
                        "brings about 270 rated answers a day)")
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
            before = cached_texts(cache)
            report["export_kto"] = child(["--home", str(home.root), "--stage", "export",
                                          "--out", out])
            after = cached_texts(cache)
            report["export_kto"]["texts_embedded"] = after - before
            before = after
            # The nightly case: the export of the night before embedded the history; a
            # day's feedback arrives; tonight's export embeds only that.
            # (seeded by what the home holds: each day on a kept home brings new texts)
            report["a_days_feedback"] = a_days_feedback(home, args.days_feedback,
                                                        random.Random(report["rated_answers"]))
            report["export_kto_next_night"] = child(["--home", str(home.root), "--stage",
                                                     "export", "--out", out])
            report["export_kto_next_night"]["texts_embedded"] = (
                cached_texts(cache) - before)
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
