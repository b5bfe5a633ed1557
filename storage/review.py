"""What curators and admins look at: the review queue, side-by-side picks, and how each
adapter's answers were rated.

Everything here reads `judgements` (one row per answer, kept current by triggers: see
storage/db.py) and `thumbs_daily` (answers and thumbs per adapter per day), never every rating:
a page costs the same with a year of feedback as with a day of it. The plots' data over time
is storage/activity.py.
"""

import json
from typing import Any

import sqlite_utils

from storage import BASE, paging
from storage.db import present
from storage.paging import Page

RANKS = {"down": 0, "unrated": 1, "up": 2}  # the queue's order: thumbs-down first

# One answer as the queue shows it. The FROM clause starts at `judgements` and joins by
# primary key, so the queue index alone decides the order and the LIMIT stops the scan.
_ANSWER = """
    SELECT j.message_id AS id, j.conversation_id, m.content, j.adapter_id, j.created_at,
           c.user_id, j.rating, j.reasons, j.score, corr.content AS correction, j.flags,
           j.reviewed, j.rank
    FROM judgements j
    JOIN messages m ON m.id = j.message_id
    JOIN conversations c ON c.id = j.conversation_id
    LEFT JOIN corrections corr ON corr.id = j.correction_id
"""


def _filters(rating: str, adapter: str, since: str | None, reviewed: str
             ) -> tuple[list[int], list[str], dict]:
    """(ranks to read, WHERE terms, their parameters) for a queue's filters."""
    if rating not in ("any", *RANKS):
        raise ValueError(f"rating must be any, up, down or unrated, not {rating!r}")
    if reviewed not in ("any", "yes", "no"):
        raise ValueError(f"reviewed must be any, yes or no, not {reviewed!r}")
    # The filters are fixed fragments (never the caller's text), so the planner sees each
    # combination as its own query and picks the queue index made for it.
    where: list[str] = ["j.rank = :rank"]
    args: dict[str, Any] = {}
    if adapter != "any":
        where.append("j.adapter_id IS :adapter")
        args["adapter"] = None if adapter == BASE else adapter
    if reviewed != "any":
        where.append("j.reviewed = :reviewed")
        args["reviewed"] = int(reviewed == "yes")
    if since:
        where.append("j.created_at >= :since")
        args["since"] = since
    return ([RANKS[rating]] if rating != "any" else sorted(RANKS.values())), where, args


def _rank_page(where: list[str], keyset: bool) -> str:
    """One rank's slice of the queue, newest first, after a keyset when given."""
    terms = where + (["(j.created_at, j.message_id) < (:at, :id)"] if keyset else [])
    terms.append("c.deleted_at IS NULL")  # a deleted conversation is gone from the queue too
    return (_ANSWER + " WHERE " + " AND ".join(terms)
            + " ORDER BY j.created_at DESC, j.message_id DESC LIMIT :limit")


def review_queue(db: sqlite_utils.Database, rating: str = "any", adapter: str = "any",
                 since: str | None = None, reviewed: str = "any",
                 limit: int = paging.DEFAULT_PAGE, after: str | None = None) -> Page:
    """A page of answers to review. rating: any / up / down / unrated; adapter: any / base /
    an id; since: 'YYYY-MM-DD'; reviewed: any / yes / no. Thumbs-down first, then unrated,
    then thumbs-up; newest first within each. `after` is the previous page's `next`."""
    ranks, where, args = _filters(rating, adapter, since, reviewed)
    cursor = paging.decode(after, 3)
    rows: list[dict] = []
    for rank in ranks:  # each rank is a range of the index: read in order, stop at the limit
        if cursor and rank < cursor[0]:
            continue
        keyset = cursor is not None and rank == cursor[0]
        rows += db.execute_returning_dicts(_rank_page(where, keyset), {
            **args, "rank": rank, "limit": limit + 1 - len(rows),
            **({"at": cursor[1], "id": cursor[2]} if cursor and keyset else {})})
        if len(rows) > limit:
            break
    return paging.page_of([_decode(r) for r in rows], limit,
                          lambda r: [r["rank"], r["created_at"], r["id"]])


def explain_queue(db: sqlite_utils.Database, rating: str = "any", adapter: str = "any",
                  since: str | None = None, reviewed: str = "any", next_page: bool = False
                  ) -> list[str]:
    """SQLite's plan for a page of the queue with these filters (EXPLAIN QUERY PLAN)."""
    ranks, where, args = _filters(rating, adapter, since, reviewed)
    params = {**args, "rank": ranks[0], "limit": 1, "at": "", "id": ""}
    return [r[3] for r in db.execute("EXPLAIN QUERY PLAN " + _rank_page(where, next_page),
                                     params)]


def answer_review(db: sqlite_utils.Database, message_id: str) -> dict | None:
    """One answer as the queue shows it: the rating that counts, score, correction, flags."""
    rows = db.execute_returning_dicts(
        _ANSWER + " WHERE j.message_id = ? AND c.deleted_at IS NULL", [message_id])
    return _decode(rows[0]) if rows else None


def queue_counts(db: sqlite_utils.Database) -> dict[str, int]:
    """How many answers are in each state of the queue: down / unrated / up, and how many of
    all are reviewed. One pass over the queue index (no table rows read), less the answers
    of deleted conversations (few: found through their own index)."""
    counts = {"down": 0, "unrated": 0, "up": 0, "reviewed": 0}
    names = {rank: name for name, rank in RANKS.items()}
    every = db.execute("SELECT rank, reviewed, COUNT(*) FROM judgements GROUP BY rank, reviewed")
    deleted = db.execute(
        """SELECT j.rank, j.reviewed, -COUNT(*) FROM conversations c
           JOIN messages m ON m.conversation_id = c.id JOIN judgements j ON j.message_id = m.id
           WHERE c.deleted_at IS NOT NULL GROUP BY j.rank, j.reviewed""")
    for rank, reviewed, n in [*every, *deleted]:
        counts[names[rank]] += n
        counts["reviewed"] += n if reviewed else 0
    return counts


def asker_feedback(db: sqlite_utils.Database, message_id: str) -> dict:
    """Who asked the question an answer answers, and their own latest thumbs, reasons and
    comment on it (what a curator reads before judging)."""
    rows = db.execute_returning_dicts(
        """SELECT u.name, r.rating, r.reasons, r.comment FROM messages m
           JOIN conversations c ON c.id = m.conversation_id
           LEFT JOIN users u ON u.id = c.user_id
           LEFT JOIN ratings r ON r.id = (SELECT MAX(id) FROM ratings WHERE message_id = m.id
                                          AND rater_id IS c.user_id AND rating IS NOT NULL)
           WHERE m.id = ?""", [message_id])
    if not rows:
        return {}
    row = rows[0]
    return {"asker": row["name"] or "local", "rating": row["rating"],
            "reasons": json.loads(row["reasons"] or "[]"), "comment": row["comment"]}


def _decode(row: dict) -> dict:
    row["reviewed"] = bool(row["reviewed"])
    row["reasons"] = json.loads(row["reasons"] or "[]")
    return row


WINNERS = ("a", "b", "tie", "both_bad")


def record_comparison(db: sqlite_utils.Database, prompt_id: str, answer_a: str, answer_b: str,
                      winner: str, curator_id: int | None = None, reason: str | None = None,
                      shown_first: str | None = None) -> int:
    """A curator's pick between two answers to one prompt: 'a' or 'b' is a preference pair
    for training; a tie and 'both_bad' are kept (apart) but train nothing. `shown_first`:
    which answer the page showed as the first of the two, when it hid their names."""
    if winner not in WINNERS:
        raise ValueError(f"winner must be one of {', '.join(WINNERS)}, not {winner!r}")
    if shown_first not in (None, "a", "b"):
        raise ValueError(f"shown_first must be a or b, not {shown_first!r}")
    return present(db.table("comparisons").insert({"prompt_id": prompt_id, "answer_a": answer_a,
                                           "answer_b": answer_b, "winner": winner,
                                           "reason": (reason or "").strip() or None,
                                           "shown_first": shown_first,
                                           "curator_id": curator_id}).last_rowid, "comparison")


def _with_rate(up: int, down: int, **more) -> dict:
    rated = up + down
    return {**more, "up": up, "down": down, "rate": round(up / rated, 3) if rated else None}


def adapter_ratings(db: sqlite_utils.Database) -> dict[str | None, dict]:
    """Per adapter that has rated answers (None: the base model): thumbs up, down and the
    thumbs-up rate, over its whole history (summed from the daily counts)."""
    rows = db.execute("""SELECT adapter, SUM(up), SUM(down) FROM thumbs_daily
                         GROUP BY adapter HAVING SUM(up) + SUM(down) > 0""").fetchall()
    return {adapter or None: _with_rate(up, down) for adapter, up, down in rows}


def arm_ratings(db: sqlite_utils.Database, since: str, until: str | None = None
                ) -> dict[str | None, dict]:
    """Per adapter (None: the base model): answers given in [since, until] and their thumbs
    up and down: the A/B report's window. Reads the answers of that window alone (by index)."""
    rows = db.execute(
        """SELECT adapter_id, COUNT(*), SUM(rating IS 'up'), SUM(rating IS 'down')
           FROM judgements WHERE created_at >= :since AND (:until IS NULL OR created_at <= :until)
           GROUP BY adapter_id""", {"since": since, "until": until}).fetchall()
    return {adapter: _with_rate(up, down, answers=n) for adapter, n, up, down in rows}
