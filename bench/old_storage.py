"""The storage queries of before (Flywheel at commit 2b17d91), kept here only so that
bench/storage.py can time them beside the new ones on the same database. Each reads every
answer into Python and filters, sorts and counts there."""

import json

import sqlite_utils

from storage import chat as store

BASE = "base"
CURATOR_ROLES = ("curator", "admin")
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


def _decode(row: dict) -> dict:
    row["reviewed"] = bool(row["score"] or row["correction"] or row["flags"])
    row["reasons"] = json.loads(row["reasons"] or "[]")
    return row


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


def ab_report(db: sqlite_utils.Database, test: dict) -> dict | None:
    """Thumbs up and down, and the up rate, of each arm's answers given since the split
    started (the candidate's vs everyone else's): what the admin page compares."""
    rows = db.execute_returning_dicts(
        ANSWERS + " AND m.created_at >= ? AND (? IS NULL OR m.created_at <= ?)",
        [test["started_at"], test["ended_at"], test["ended_at"]])
    arms = {"candidate": {"adapter": test["candidate_id"], "answers": 0, "up": 0, "down": 0},
            "control": {"adapter": "others", "answers": 0, "up": 0, "down": 0}}
    for row in rows:
        arm = arms["candidate" if row["adapter_id"] == test["candidate_id"] else "control"]
        arm["answers"] += 1
        if row["rating"]:
            arm[row["rating"]] += 1
    for arm in arms.values():
        rated = arm["up"] + arm["down"]
        arm["up_rate"] = round(arm["up"] / rated, 3) if rated else None
    return {"test": test, **arms}


# Conversations whose owner withheld consent or is disabled: nothing in them is trained on.
_WITHHELD = """SELECT c.id FROM conversations c JOIN users u ON u.id = c.user_id
               WHERE u.consent = 0 OR u.disabled = 1"""


def _excluded(db: sqlite_utils.Database) -> tuple[set[str], set[str]]:
    """(flagged message ids, withheld conversation ids)."""
    flagged = {r[0] for r in db.execute("SELECT DISTINCT message_id FROM flags")}
    return flagged, {r[0] for r in db.execute(_WITHHELD)}


def _judgements(db: sqlite_utils.Database) -> dict[str, dict]:
    """Per answer: the thumbs rating that counts and the latest 1-5 score."""
    rows = db.execute_returning_dicts(
        """SELECT r.id, r.message_id, r.rating, r.score, u.role, r.rater_id, u.disabled
           FROM ratings r LEFT JOIN users u ON u.id = r.rater_id ORDER BY r.id""")
    out: dict[str, dict] = {}
    for row in rows:
        if row["disabled"]:
            continue
        entry = out.setdefault(row["message_id"], {"rating": None, "by_curator": False,
                                                   "score": None})
        curator = row["rater_id"] is None or row["role"] in CURATOR_ROLES
        if row["rating"] is not None and (curator or not entry["by_curator"]):
            entry["rating"], entry["by_curator"] = row["rating"], curator
        if row["score"] is not None:
            entry["score"] = row["score"]
    return out


def select(db: sqlite_utils.Database) -> dict[str, list[dict]]:
    """All SFT, DPO and KTO examples the feedback supports, before cleaning."""
    flagged, withheld = _excluded(db)
    answers = {m["id"]: m for m in db["messages"].rows_where("role = 'assistant'")}
    usable = {i: m for i, m in answers.items()
              if i not in flagged and m["conversation_id"] not in withheld}
    judged = _judgements(db)
    corrections = {c["id"]: c["correction"] for c in db.execute_returning_dicts(
        """SELECT c.id AS correction_id, c.content AS correction, m.* FROM corrections c
           JOIN messages m ON m.id = c.message_id
           WHERE c.id = (SELECT MAX(id) FROM corrections WHERE message_id = c.message_id)""")}
    prompts: dict[str, list[dict]] = {}

    def prompt(answer: dict) -> list[dict]:
        if answer["parent_id"] not in prompts:
            prompts[answer["parent_id"]] = store.history(db, answer["parent_id"])
        return prompts[answer["parent_id"]]

    def turn(text: str) -> list[dict]:
        return [{"role": "assistant", "content": text}]

    def example(answer: dict, source: str, ids: list[str], **fields) -> dict:
        return {"prompt": prompt(answer), **fields, "source": source,
                "message_ids": ids, "conversation_id": answer["conversation_id"]}

    sft, dpo, kto = [], [], []
    for answer_id, answer in usable.items():
        j = judged.get(answer_id, {})
        if answer_id in corrections:
            text = corrections[answer_id]
            sft.append(example(answer, "correction", [answer_id], completion=turn(text)))
            if text.strip() != answer["content"].strip():
                dpo.append(example(answer, "correction_vs_original", [answer_id],
                                   chosen=turn(text), rejected=turn(answer["content"])))
        elif j.get("rating") == "up":
            sft.append(example(answer, "liked", [answer_id], completion=turn(answer["content"])))
        elif (j.get("score") or 0) >= 4:
            sft.append(example(answer, "scored", [answer_id], completion=turn(answer["content"])))
        if j.get("rating") in ("up", "down"):
            kto.append(example(answer, "thumbs", [answer_id], completion=turn(answer["content"]),
                               label=j["rating"] == "up"))

    # Liked vs. disliked siblings: answers to the same question.
    by_parent: dict[str, list[dict]] = {}
    for answer in usable.values():
        by_parent.setdefault(answer["parent_id"], []).append(answer)
    for siblings in by_parent.values():
        liked = [a for a in siblings if judged.get(a["id"], {}).get("rating") == "up"]
        disliked = [a for a in siblings if judged.get(a["id"], {}).get("rating") == "down"]
        for good in liked:
            for bad in disliked:
                dpo.append(example(good, "liked_vs_disliked", [good["id"], bad["id"]],
                                   chosen=turn(good["content"]), rejected=turn(bad["content"])))

    # Side-by-side picks (a tie says nothing about which is better).
    for pick in db["comparisons"].rows_where("winner != 'tie'", order_by="id"):
        won, lost = ((pick["answer_a"], pick["answer_b"]) if pick["winner"] == "a"
                     else (pick["answer_b"], pick["answer_a"]))
        if won in usable and lost in usable:
            dpo.append(example(usable[won], "side_by_side", [won, lost],
                               chosen=turn(usable[won]["content"]),
                               rejected=turn(usable[lost]["content"])))
    return {"sft": sft, "dpo": dpo, "kto": kto}
