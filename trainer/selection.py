"""Which feedback becomes which training example, in TRL's dataset formats.

    SFT {"prompt", "completion"}            liked answers, answers scored 4 or 5, corrections
    DPO {"prompt", "chosen", "rejected"}    correction vs. original, liked vs. disliked
                                            sibling, the winner of a side-by-side pick
    KTO {"prompt", "completion", "label"}   thumbs up / down on single answers

The prompt is the whole conversation up to the answer, system prompt first. Left out:
flagged answers (personal data, unsafe, no consent), conversations of users who did not
consent, and disabled users' data. When raters disagree on an answer, the latest judgement
of a curator (or admin, or the local owner) wins over any user's; among equals the latest
wins. Every example names the messages it came from (`message_ids`) and its conversation.
"""

import sqlite_utils

from storage import chat as store

CURATOR_ROLES = ("curator", "admin")


# Conversations whose owner withheld consent or is disabled: nothing in them is trained on.
_WITHHELD = """SELECT c.id FROM conversations c JOIN users u ON u.id = c.user_id
               WHERE u.consent = 0 OR u.disabled = 1"""


def _excluded(db: sqlite_utils.Database) -> tuple[set[str], set[str]]:
    """(flagged message ids, withheld conversation ids)."""
    flagged = {r[0] for r in db.execute("SELECT DISTINCT message_id FROM flags")}
    return flagged, {r[0] for r in db.execute(_WITHHELD)}


def excluded_messages(db: sqlite_utils.Database) -> set[str]:
    """Ids of every message that must not be trained on: flagged, or in a withheld
    conversation."""
    flagged, _ = _excluded(db)
    return flagged | {r[0] for r in db.execute(
        f"SELECT id FROM messages WHERE conversation_id IN ({_WITHHELD})")}


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
    corrections = {c["id"]: c["correction"] for c in store.corrections(db)}
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
    for answer_id, answer in usable.items():
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
