"""What curators and admins look at: the review queue, side-by-side picks, and how each
adapter's answers were rated."""

import json

import sqlite_utils

# The latest thumbs rating, latest score and latest correction of each answer, and whether a
# curator has reviewed it (scored, corrected or flagged it).
ANSWERS = """
    SELECT m.id, m.conversation_id, m.content, m.adapter_id, m.created_at, c.user_id,
        (SELECT rating FROM ratings WHERE message_id = m.id AND rating IS NOT NULL
         ORDER BY id DESC LIMIT 1) AS rating,
        (SELECT reasons FROM ratings WHERE message_id = m.id AND rating IS NOT NULL
         ORDER BY id DESC LIMIT 1) AS reasons,
        (SELECT score FROM ratings WHERE message_id = m.id AND score IS NOT NULL
         ORDER BY id DESC LIMIT 1) AS score,
        (SELECT content FROM corrections WHERE message_id = m.id ORDER BY id DESC LIMIT 1)
            AS correction,
        (SELECT group_concat(kind, ',') FROM flags WHERE message_id = m.id) AS flags
    FROM messages m JOIN conversations c ON c.id = m.conversation_id
    WHERE m.role = 'assistant'
"""
BASE = "base"  # the adapter filter value that means "answered by the bare base model"


def review_queue(db: sqlite_utils.Database, rating: str = "any", adapter: str = "any",
                 since: str | None = None, reviewed: str = "any", limit: int = 200) -> list[dict]:
    """Answers to review. rating: any / up / down / unrated; adapter: any / base / an id;
    since: 'YYYY-MM-DD'; reviewed: any / yes / no. Thumbs-down first, then unrated, then
    thumbs-up; newest first within each."""
    rows = db.execute_returning_dicts(ANSWERS + " ORDER BY m.created_at DESC")
    out = []
    for row in map(_decode, rows):
        if rating == "unrated" and row["rating"] is not None:
            continue
        if rating in ("up", "down") and row["rating"] != rating:
            continue
        if adapter == BASE and row["adapter_id"] is not None:
            continue
        if adapter not in ("any", BASE) and row["adapter_id"] != adapter:
            continue
        if since and row["created_at"][:10] < since:
            continue
        if reviewed in ("yes", "no") and row["reviewed"] != (reviewed == "yes"):
            continue
        out.append(row)
    order = {"down": 0, None: 1, "up": 2}
    out.sort(key=lambda r: order[r["rating"]])  # stable: newest first within each
    return out[:limit]


def answer_review(db: sqlite_utils.Database, message_id: str) -> dict | None:
    """One answer as the queue shows it: latest rating, score, correction, flags."""
    rows = db.execute_returning_dicts(ANSWERS + " AND m.id = ?", [message_id])
    return _decode(rows[0]) if rows else None


def _decode(row: dict) -> dict:
    row["reviewed"] = bool(row["score"] or row["correction"] or row["flags"])
    row["reasons"] = json.loads(row["reasons"] or "[]")
    return row


def record_comparison(db: sqlite_utils.Database, prompt_id: str, answer_a: str, answer_b: str,
                      winner: str, curator_id: int | None = None) -> int:
    """A curator's pick between two answers to one prompt: a preference pair for training."""
    if winner not in ("a", "b", "tie"):
        raise ValueError(f"winner must be a, b or tie, not {winner!r}")
    return db["comparisons"].insert({"prompt_id": prompt_id, "answer_a": answer_a,
                                     "answer_b": answer_b, "winner": winner,
                                     "curator_id": curator_id}).last_pk


def adapter_ratings(db: sqlite_utils.Database) -> dict[str | None, dict]:
    """Per adapter (None: the base model): thumbs up, down and the thumbs-up rate."""
    stats: dict = {}
    for row in db.execute_returning_dicts(ANSWERS):
        if row["rating"] is None:
            continue
        entry = stats.setdefault(row["adapter_id"], {"up": 0, "down": 0})
        entry[row["rating"]] += 1
    for entry in stats.values():
        entry["rate"] = round(entry["up"] / (entry["up"] + entry["down"]), 3)
    return stats


def thumbs_up_over_time(db: sqlite_utils.Database) -> list[dict]:
    """Each adapter's running thumbs-up rate, one point per rated answer in the order they
    were given: the rows of the admin page's plot."""
    rows = sorted((r for r in db.execute_returning_dicts(ANSWERS) if r["rating"]),
                  key=lambda r: r["created_at"])
    counts: dict = {}
    points = []
    for row in rows:
        adapter = row["adapter_id"] or BASE
        up, n = counts.get(adapter, (0, 0))
        up, n = up + (row["rating"] == "up"), n + 1
        counts[adapter] = (up, n)
        points.append({"time": row["created_at"], "adapter": adapter,
                       "thumbs_up_rate": round(up / n, 3), "ratings": n})
    return points
