"""The dataset files, JSON Lines: read back whole or a chunk at a time, and written out as the
rows a trainer takes (TRL's fields, or OpenAI's `messages`)."""

import json
from pathlib import Path
from typing import Iterable, Iterator


def batched(items: Iterable, size: int) -> Iterator[list]:
    """`items` in lists of `size` (the last one shorter)."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def chunks(path: Path, size: int) -> Iterator[list[dict]]:
    """The records of a JSON Lines file, `size` at a time."""
    with open(path) as f:
        yield from batched((json.loads(line) for line in f), size)


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON Lines file, blank lines skipped."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_rows(paths: list[Path], kind: str, out) -> int:
    """Stream the examples in `paths` to the file `out` as JSONL in `kind` (sft, dpo, kto:
    TRL's fields; openai: a `messages` list); returns how many rows."""
    fmt = "sft" if kind == "openai" else kind
    rows = 0
    for path in paths:
        with open(path) as f:
            for line in f:
                e = json.loads(line)
                row = to_openai(e) if kind == "openai" else to_trl(e, fmt)
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                rows += 1
    return rows


def to_trl(example: dict, fmt: str) -> dict:
    """Just the fields TRL reads."""
    keys = {"sft": ("prompt", "completion"), "dpo": ("prompt", "chosen", "rejected"),
            "kto": ("prompt", "completion", "label")}[fmt]
    return {k: example[k] for k in keys}


def to_openai(example: dict) -> dict:
    """OpenAI's chat fine-tuning format: one `messages` list (SFT examples)."""
    return {"messages": example["prompt"] + example["completion"]}
