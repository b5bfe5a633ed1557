"""The feedback the trainer reads, as streams in bounded memory: judged answers, answers to
one question that were liked and disliked, side-by-side picks; and which messages may still
be trained on.

Left out everywhere: flagged answers (personal data, unsafe, no consent), deleted
conversations, conversations of users who withheld consent or are disabled. Each stream
reads a batch at a time by a keyset (the last row's sort key), so a year of feedback never
sits in memory at once.
"""

from typing import Iterator

import sqlite_utils

BATCH = 1000

# The conversation may be trained on: not deleted by its owner, and the owner lets us: the
# local owner (no user), or a user who consents and is enabled. `c` is the conversation and
# `u` its owner, joined by `LEFT JOIN users u ON u.id = c.user_id`.
_MAY_TRAIN = ("(c.deleted_at IS NULL AND "
              "(u.id IS NULL OR (u.consent = 1 AND u.disabled = 0)))")


def judged_answers(db: sqlite_utils.Database, batch: int = BATCH) -> Iterator[dict]:
    """Every trainable answer with a judgement (a rating that counts, a score or a
    correction), oldest first: the answer's row, its judgement and the correction's text."""
    key = ["", ""]
    while True:
        rows = db.execute_returning_dicts(
            f"""SELECT j.message_id AS id, j.conversation_id, j.parent_id, j.adapter_id,
                       j.created_at, j.rating, j.by_curator, j.score, m.content,
                       corr.content AS correction
                FROM judgements j
                JOIN messages m ON m.id = j.message_id
                JOIN conversations c ON c.id = j.conversation_id
                LEFT JOIN users u ON u.id = c.user_id
                LEFT JOIN corrections corr ON corr.id = j.correction_id
                WHERE (j.rating IS NOT NULL OR j.score IS NOT NULL OR j.correction_id IS NOT NULL)
                  AND (j.created_at, j.message_id) > (?, ?)
                  AND j.flags IS NULL AND {_MAY_TRAIN}
                ORDER BY j.created_at, j.message_id LIMIT ?""", [*key, batch])
        yield from rows
        if len(rows) < batch:
            return
        key = [rows[-1]["created_at"], rows[-1]["id"]]


def disagreeing_siblings(db: sqlite_utils.Database, batch: int = BATCH
                         ) -> Iterator[tuple[list[dict], list[dict]]]:
    """(liked, disliked): trainable answers to one question, for each question whose
    answers got both a thumbs-up and a thumbs-down (ratings that count), oldest first."""
    after = ""
    while True:
        parents = [r[0] for r in db.execute(
            """SELECT parent_id FROM judgements
               WHERE rating IS NOT NULL AND parent_id > ? AND flags IS NULL
               GROUP BY parent_id HAVING SUM(rating = 'up') > 0 AND SUM(rating = 'down') > 0
               ORDER BY parent_id LIMIT ?""", [after, batch])]
        if not parents:
            return
        rows = db.execute_returning_dicts(
            f"""SELECT j.message_id AS id, j.conversation_id, j.parent_id, j.rating, m.content
                FROM judgements j
                JOIN messages m ON m.id = j.message_id
                JOIN conversations c ON c.id = j.conversation_id
                LEFT JOIN users u ON u.id = c.user_id
                WHERE j.parent_id IN ({", ".join("?" * len(parents))})
                  AND j.rating IS NOT NULL AND j.flags IS NULL AND {_MAY_TRAIN}
                ORDER BY j.parent_id, j.created_at, j.message_id""", parents)
        by_parent: dict[str, list[dict]] = {}
        for row in rows:
            by_parent.setdefault(row["parent_id"], []).append(row)
        for siblings in by_parent.values():
            liked = [a for a in siblings if a["rating"] == "up"]
            disliked = [a for a in siblings if a["rating"] == "down"]
            if liked and disliked:
                yield liked, disliked
        after = parents[-1]


def side_by_side_picks(db: sqlite_utils.Database, batch: int = BATCH) -> Iterator[dict]:
    """Curators' picks with a winner (not ties, not "both bad") whose two answers may both
    be trained on: `{"id", "won": answer row, "lost": answer row}`, in the order made."""
    after = 0
    answer = f"""SELECT m.id, m.conversation_id, m.parent_id, m.content FROM messages m
                 JOIN judgements j ON j.message_id = m.id
                 JOIN conversations c ON c.id = m.conversation_id
                 LEFT JOIN users u ON u.id = c.user_id
                 WHERE m.id = ? AND j.flags IS NULL AND {_MAY_TRAIN}"""
    while True:
        picks = db.execute_returning_dicts(
            "SELECT * FROM comparisons WHERE winner IN ('a', 'b') AND id > ? ORDER BY id LIMIT ?",
            [after, batch])
        for pick in picks:
            won, lost = ((pick["answer_a"], pick["answer_b"]) if pick["winner"] == "a"
                         else (pick["answer_b"], pick["answer_a"]))
            rows = [db.execute_returning_dicts(answer, [i]) for i in (won, lost)]
            if all(rows):
                yield {"id": pick["id"], "won": rows[0][0], "lost": rows[1][0]}
        if len(picks) < batch:
            return
        after = picks[-1]["id"]


def trainable(db: sqlite_utils.Database, message_ids: list[str]) -> set[str]:
    """Those of `message_ids` that may still be trained on: they exist (not pruned), are not
    flagged, and their conversation's owner consents and is enabled."""
    out: set[str] = set()
    ids = list(dict.fromkeys(i for i in message_ids if i))
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        out |= {r[0] for r in db.execute(
            f"""SELECT m.id FROM messages m
                JOIN conversations c ON c.id = m.conversation_id
                LEFT JOIN users u ON u.id = c.user_id
                WHERE m.id IN ({", ".join("?" * len(chunk))}) AND {_MAY_TRAIN}
                  AND NOT EXISTS (SELECT 1 FROM flags f WHERE f.message_id = m.id)""", chunk)}
    return out


def written_by(db: sqlite_utils.Database, message_ids: list[str],
               adapter_id: str | None) -> set[str]:
    """Those of `message_ids` that `adapter_id` wrote (None: the bare base model)."""
    out: set[str] = set()
    for start in range(0, len(message_ids), 500):
        chunk = message_ids[start:start + 500]
        out |= {r[0] for r in db.execute(
            f"""SELECT id FROM messages WHERE id IN ({", ".join("?" * len(chunk))})
                AND adapter_id IS ?""", [*chunk, adapter_id])}
    return out
