"""Which feedback becomes which training example, in TRL's dataset formats.

    SFT {"prompt", "completion"}            liked answers, answers scored 4 or 5, corrections
    DPO {"prompt", "chosen", "rejected"}    correction vs. original, liked vs. disliked
                                            sibling, the winner of a side-by-side pick
    KTO {"prompt", "completion", "label"}   thumbs up / down on single answers

The prompt is the whole conversation up to the answer, system prompt first. Left out:
flagged answers (personal data, unsafe, no consent), conversations of users who did not
consent, and disabled users' data. When raters disagree on an answer, the latest judgement
of a curator (or admin, or the local owner) wins over any user's; among equals the latest
wins (storage keeps that judgement current: `judgements` in storage/db.py). Every example
names the messages it came from (`message_ids`) and its conversation.

`examples()` is a stream: feedback is read a batch at a time (storage/feedback.py), so
memory does not grow with the history.
"""

from collections import OrderedDict
from typing import Iterator

import sqlite_utils

from storage import chat as store
from storage import feedback


class _Prompts:
    """The conversation up to each question, remembered for the last few thousand questions
    (an answer's siblings and its pairs come soon after it)."""

    def __init__(self, db: sqlite_utils.Database, size: int = 4096):
        self.db, self.size, self.cache = db, size, OrderedDict()

    def __call__(self, parent_id: str) -> list[dict]:
        if parent_id in self.cache:
            self.cache.move_to_end(parent_id)
        else:
            self.cache[parent_id] = store.history(self.db, parent_id)
            if len(self.cache) > self.size:
                self.cache.popitem(last=False)
        return self.cache[parent_id]


def _turn(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def examples(db: sqlite_utils.Database) -> Iterator[tuple[str, dict]]:
    """(format, example) for every example the feedback supports, before cleaning."""
    prompt = _Prompts(db)

    def example(answer: dict, source: str, ids: list[str], **fields) -> dict:
        return {"prompt": prompt(answer["parent_id"]), **fields, "source": source,
                "message_ids": ids, "conversation_id": answer["conversation_id"]}

    for answer in feedback.judged_answers(db):
        answer_id, text = answer["id"], answer["content"]
        if answer["correction"] is not None:
            correction = answer["correction"]
            yield "sft", example(answer, "correction", [answer_id], completion=_turn(correction))
            if correction.strip() != text.strip():
                yield "dpo", example(answer, "correction_vs_original", [answer_id],
                                     chosen=_turn(correction), rejected=_turn(text))
        elif answer["rating"] == "up":
            yield "sft", example(answer, "liked", [answer_id], completion=_turn(text))
        elif (answer["score"] or 0) >= 4:
            yield "sft", example(answer, "scored", [answer_id], completion=_turn(text))
        if answer["rating"] in ("up", "down"):
            yield "kto", example(answer, "thumbs", [answer_id], completion=_turn(text),
                                 label=answer["rating"] == "up")

    for liked, disliked in feedback.disagreeing_siblings(db):
        for good in liked:
            for bad in disliked:
                yield "dpo", example(good, "liked_vs_disliked", [good["id"], bad["id"]],
                                     chosen=_turn(good["content"]),
                                     rejected=_turn(bad["content"]))

    for pick in feedback.side_by_side_picks(db):  # a tie says nothing about which is better
        won, lost = pick["won"], pick["lost"]
        yield "dpo", example(won, "side_by_side", [won["id"], lost["id"]],
                             chosen=_turn(won["content"]), rejected=_turn(lost["content"]))


def select(db: sqlite_utils.Database) -> dict[str, list[dict]]:
    """Every example in lists, by format (small data and tests; the pipeline streams)."""
    out: dict[str, list[dict]] = {"sft": [], "dpo": [], "kto": []}
    for fmt, example in examples(db):
        out[fmt].append(example)
    return out
