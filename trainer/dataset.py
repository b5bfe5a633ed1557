"""Building training data from feedback, in TRL's conversational prompt-completion format.

SFT examples come from answers whose latest rating is thumbs up (the answer as given) and
from curator corrections (the corrected text). The prompt is the whole conversation up to
the answer, system prompt included; loss is taken on the completion only.
"""

import hashlib
import json
from collections import Counter

import sqlite_utils

from storage import chat as store


def build_sft(db: sqlite_utils.Database) -> list[dict]:
    """Every SFT example with where it came from; a corrected answer yields the correction,
    not the original, even when the original was liked."""
    corrected = {row["id"]: row for row in store.corrections(db)}
    examples = []
    for answer in store.latest_ratings(db):
        if answer["rating"] == "up" and answer["id"] not in corrected:
            examples.append(_example(db, answer, answer["content"], "liked"))
    for answer in corrected.values():
        examples.append(_example(db, answer, answer["correction"], "correction"))
    return [e for e in examples if e["completion"][0]["content"].strip()]


def _example(db: sqlite_utils.Database, answer: dict, completion: str, source: str) -> dict:
    return {
        "prompt": store.history(db, answer["parent_id"]),
        "completion": [{"role": "assistant", "content": completion}],
        "source": source,
        "message_id": answer["id"],
    }


def example_hash(example: dict) -> str:
    text = json.dumps([example["prompt"], example["completion"]], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def manifest(examples: list[dict]) -> dict:
    """What a run trained on: a content hash per example and counts per source."""
    return {
        "format": "sft",
        "count": len(examples),
        "sources": dict(Counter(e["source"] for e in examples)),
        "examples": [{"message_id": e["message_id"], "source": e["source"],
                      "sha256": example_hash(e)} for e in examples],
    }
