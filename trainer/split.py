"""The train / validation split: by conversation (a stable hash of its id), every format
alike, so a conversation never changes side as data grows; conversations linked by a
near-duplicate group are merged and share a side."""

import json
import os
from collections import Counter
from pathlib import Path
from typing import Literal

from storage import buckets
from storage.run_records import ExampleEntry, FormatSplit
from trainer.dataset_files import chunks


def split_of(conversation_id: str, validation_share: float
             ) -> Literal["train", "validation"]:
    """'train' or 'validation', from a hash of the conversation id alone: a conversation
    never changes side as data grows, and all its examples are on the same side."""
    return "validation" if buckets.position(conversation_id) < validation_share else "train"


class ConversationSets:
    """Conversations linked by a near-duplicate group, merged (union-find): each merged set
    goes to one side of the split, that of its smallest conversation id."""

    def __init__(self):
        self.parent: dict[str, str] = {}

    def root(self, c: str) -> str:
        """The representative of `c`'s merged set (shortening the path on the way)."""
        parent = self.parent
        while parent.get(c, c) != c:
            parent[c] = parent.get(parent[c], parent[c])
            c = parent[c]
        return c

    def join(self, a: str, b: str) -> None:
        """Merge the sets of conversations `a` and `b` (the smaller root id leads)."""
        a, b = self.root(a), self.root(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def split_file(kept: Path, out_dir: Path, fmt: str, sets: ConversationSets,
               validation_share: float, chunk_size: int) -> FormatSplit:
    """Each example of `kept` to its side's file, `{fmt}-{train,validation}.jsonl` in
    `out_dir` (a temporary name, renamed when complete; `kept` is removed); the format's part
    of the manifest."""
    sizes: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    entries: list[ExampleEntry] = []
    paths = {side: out_dir / f"{fmt}-{side}.jsonl" for side in ("train", "validation")}
    outs = {side: open(path.with_name(f".{path.name}.tmp"), "w") for side, path in paths.items()}
    with outs["train"], outs["validation"]:
        for chunk in chunks(kept, chunk_size):
            for e in chunk:
                e.setdefault("group", e["conversation_id"])
                side = split_of(sets.root(e["conversation_id"]), validation_share)
                outs[side].write(json.dumps(e, ensure_ascii=False) + "\n")
                sizes[side] += 1
                sources[e["source"]] += 1
                entries.append({"sha256": e["sha256"], "source": e["source"],
                                "message_ids": e["message_ids"], "split": side})
    for path in paths.values():
        os.replace(path.with_name(f".{path.name}.tmp"), path)
    kept.unlink()
    return {"train": sizes["train"], "validation": sizes["validation"],
            "sources": dict(sources),
            "examples": sorted(entries, key=lambda e: e["split"] != "train")}
