"""`flywheel prune --keep-days N`: a deployment keeps a year of conversations, not forever.

A conversation whose last message is older than N days goes, with everything hanging off it:
its messages, their ratings, corrections, flags, side-by-side picks and judgements. So does
every conversation its owner deleted (hidden at once everywhere, kept until this runs so that
Undo works). Then the training data copies go too: the replay files of past runs
(`runs/<id>/sft-train.jsonl`) lose the examples of pruned messages, and finished runs' `data/`
folders (kept only so that an interrupted run can resume) are removed. An adapter cannot
forget what it learnt, so each run whose files held erased examples says so in its manifest
(`erased_examples`, `erased_at`): the admin sees which adapters were trained on them.
Expired sign-in sessions are removed as well.

Deletes run in batches of conversations, each its own short transaction, so a server writing
at the same time waits milliseconds, not minutes.
"""

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import sqlite_utils

from storage.db import transaction, utc_now
from storage.home import Home

DEFAULT_KEEP_DAYS = 365
BATCH = 200  # conversations per transaction


def prune_conversations(db: sqlite_utils.Database, keep_days: float,
                        batch: int = BATCH) -> Counter:
    """Delete conversations last active more than `keep_days` ago and those their owners
    deleted, and all that hangs off them; returns how many rows of each table went."""
    if keep_days < 0:
        raise ValueError(f"--keep-days must be 0 or more, not {keep_days}")
    cutoff = utc_now(plus_hours=-24 * keep_days)
    gone: Counter[str] = Counter()
    old = ("SELECT id FROM conversations WHERE updated_at < ? ORDER BY updated_at LIMIT ?",
           [cutoff, batch])
    deleted = ("SELECT id FROM conversations WHERE deleted_at IS NOT NULL LIMIT ?", [batch])
    for query, args in (old, deleted):
        gone += _erase_all(db, query, args)
    with transaction(db):
        db.execute("DELETE FROM thumbs_daily WHERE answers <= 0")
        gone["sessions"] += db.execute("DELETE FROM sessions WHERE expires_at < ?",
                                       [utc_now()]).rowcount
    return gone


def _erase_all(db: sqlite_utils.Database, query: str, args: list) -> Counter:
    """Erase the conversations `query` picks, a batch per transaction, until none is left."""
    gone: Counter[str] = Counter()
    while True:
        with transaction(db):
            ids = [r[0] for r in db.execute(query, args)]
            if not ids:
                return gone
            marks = ", ".join("?" * len(ids))
            messages = f"SELECT id FROM messages WHERE conversation_id IN ({marks})"
            # Judgements first: their own triggers keep the daily counts right, and the
            # rating/correction/flag triggers then find nothing left to recount.
            for table, where in (("judgements", f"message_id IN ({messages})"),
                                 ("comparisons", f"prompt_id IN ({messages})"),
                                 ("ratings", f"message_id IN ({messages})"),
                                 ("corrections", f"message_id IN ({messages})"),
                                 ("flags", f"message_id IN ({messages})"),
                                 ("messages", f"conversation_id IN ({marks})"),
                                 ("conversations", f"id IN ({marks})")):
                gone[table] += db.execute(f"DELETE FROM {table} WHERE {where}", ids).rowcount


def prune_run_files(db: sqlite_utils.Database, home: Home) -> Counter:
    """Remove pruned messages from what past runs kept on disk: examples in replay files,
    and the `data/` folders of finished runs."""
    gone: Counter[str] = Counter()
    finished = {r[0] for r in db.execute(
        "SELECT id FROM training_runs WHERE status != 'running'")}
    for run in sorted(home.runs_dir.glob("*/")):
        if run.name in finished and (run / "data").is_dir():
            shutil.rmtree(run / "data")
            gone["run data folders"] += 1
        erased = sum(_drop_missing(db, path) for path in run.glob("*.jsonl"))
        if erased:
            gone["replay examples"] += erased
            gone["runs trained on erased examples"] += _mark_erased(db, run.name, erased)
    return gone


def _mark_erased(db: sqlite_utils.Database, run_id: str, erased: int) -> int:
    """Add to a run's manifest how many of its examples were erased after it trained."""
    row = db.execute("SELECT manifest FROM training_runs WHERE id = ?", [run_id]).fetchone()
    if row is None:
        return 0
    manifest = json.loads(row[0] or "{}")
    manifest["erased_examples"] = manifest.get("erased_examples", 0) + erased
    manifest["erased_at"] = utc_now()
    with transaction(db):
        db.execute("UPDATE training_runs SET manifest = ? WHERE id = ?",
                   [json.dumps(manifest), run_id])
    return 1


def _drop_missing(db: sqlite_utils.Database, path: Path) -> int:
    """Rewrite a JSONL file of examples without those whose messages no longer exist."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    ids = list({i for r in rows for i in r.get("message_ids") or [r.get("message_id")] if i})
    existing = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        existing |= {r[0] for r in db.execute(
            f"SELECT id FROM messages WHERE id IN ({', '.join('?' * len(chunk))})", chunk)}
    kept = [r for r in rows
            if all(i in existing for i in r.get("message_ids") or [r.get("message_id")] if i)]
    if len(kept) < len(rows):
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
        os.replace(tmp, path)
    return len(rows) - len(kept)


def prune(db: sqlite_utils.Database, home: Home, keep_days: float) -> Counter:
    """Both of the above: what `flywheel prune` does."""
    gone = prune_conversations(db, keep_days)
    gone.update(prune_run_files(db, home))
    return gone
