"""Which feedback becomes which training example, in TRL's dataset formats.

    SFT {"prompt", "completion"}            liked answers, answers scored 4 or 5, corrections
    DPO {"prompt", "chosen", "rejected"}    correction vs. original, liked vs. disliked
                                            sibling, the winner of a side-by-side pick
    KTO {"prompt", "completion", "label"}   thumbs up / down on single answers

The prompt is the whole conversation up to the answer, system prompt first. Left out:
flagged answers (personal data, unsafe, no consent), deleted conversations, conversations
of users who did not consent, and disabled users' data. When raters disagree on an answer,
the latest judgement of a curator (or admin, or the local owner) wins over any user's;
among equals the latest wins (storage keeps that judgement current: `judgements` in
storage/db.py). Every example names the messages it came from (`message_ids`) and its
conversation.

`examples()` is a stream: feedback is read a batch at a time (storage/feedback.py), so
memory does not grow with the history.
"""

from collections import OrderedDict
from typing import Iterator

import sqlite_utils

from storage import chat as store
from storage import feedback

FORMATS = ("sft", "dpo", "kto")
# The fields that hold each format's answers (each a list of one assistant turn).
ANSWER_KEYS = {"sft": ("completion",), "dpo": ("chosen", "rejected"), "kto": ("completion",)}


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


def _from_answer(answer: dict) -> Iterator[tuple[str, str, dict]]:
    """(format, source, fields) of each example one judged answer supports."""
    text = answer["content"]
    if answer["correction"] is not None:
        correction = answer["correction"]
        yield "sft", "correction", {"completion": _turn(correction)}
        if correction.strip() != text.strip():
            yield "dpo", "correction_vs_original", {"chosen": _turn(correction),
                                                   "rejected": _turn(text)}
    elif answer["rating"] == "up":
        yield "sft", "liked", {"completion": _turn(text)}
    elif (answer["score"] or 0) >= 4:
        yield "sft", "scored", {"completion": _turn(text)}
    if answer["rating"] in ("up", "down"):
        yield "kto", "thumbs", {"completion": _turn(text), "label": answer["rating"] == "up"}


def examples(db: sqlite_utils.Database, formats=FORMATS) -> Iterator[tuple[str, dict]]:
    """(format, example) for every example of `formats` the feedback supports, before
    cleaning."""
    prompt = _Prompts(db)

    def example(answer: dict, source: str, ids: list[str], **fields) -> dict:
        return {"prompt": prompt(answer["parent_id"]), **fields, "source": source,
                "message_ids": ids, "conversation_id": answer["conversation_id"]}

    for answer in feedback.judged_answers(db):
        for fmt, source, fields in _from_answer(answer):
            if fmt in formats:
                yield fmt, example(answer, source, [answer["id"]], **fields)
    if "dpo" not in formats:
        return

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
