"""From feedback to datasets the trainer can trust: the pipeline that runs each step over the
whole history, streaming through files.

    selection.examples() SFT / DPO / KTO examples with provenance, streamed (trainer/selection.py)
    clean                drop empty or broken examples; fit the context by dropping the
                         oldest turns, never by cutting the answer (trainer/cleaning.py)
    scrub                personal data -> typed placeholders (trainer/privacy.py)
    deduplicate          exact copies, and near-copies by all-MiniLM-L6-v2 embeddings of prompt
                         and answers (trainer/dedup_pass.py, trainer/dedup.py); prompts that
                         are near-copies but got different answers stay, as one group
    split                train / validation by conversation (a stable hash), every format
                         alike; conversations linked by a near-duplicate group share a side
                         (trainer/split.py)

`build_to()` streams: examples go through these steps a chunk at a time and wait in files
under the output folder, so memory holds per example only its hash and group, whatever the
history; it writes `{format}-{train,validation}.jsonl` there and returns a manifest (a content
hash per example, counts per format and source, what was dropped and why, what was scrubbed).
`build()` does the same in a temporary folder and returns the datasets as lists.

Callers outside trainer/ (the CLI, benches, tests) import the pipeline's names from here,
whichever module holds them; trainer's own modules import from those modules.
"""

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from storage.run_records import DatasetManifest
from trainer import selection
from trainer.cleaning import cleaned, example_hash
from trainer.config import TrainConfig, update
from trainer.dataset_files import batched, read_jsonl, write_rows
from trainer.dedup_pass import MINILM, deduplicate, default_embedder
from trainer.progress import PhaseBar
from trainer.selection import FORMATS
from trainer.split import ConversationSets, split_file, split_of
from trainer.tokens import token_counter

__all__ = ["FORMATS", "MINILM", "DataConfig", "build", "build_to", "default_embedder",
           "example_hash", "read_jsonl", "split_of", "token_counter", "write_rows"]


@dataclass(init=False)
class DataConfig:
    """What the pipeline reads: a run's TrainConfig, and the pipeline's own knobs.

    One home per setting. The settings a run shares with the pipeline (max_length,
    validation_share, near_duplicate_threshold, and min_examples / min_pairs / min_rated,
    the fewest SFT examples, DPO pairs and KTO ratings worth training on) live in TrainConfig
    alone, as flat top-level keys: TOML config files, `--set min_examples=4` flags, the
    options `flywheel train` maps onto them and the plan.json of earlier runs (read back by
    --resume) all name them there, so they are neither moved into a nested [data] table
    (which would break those names) nor copied here. This reads them from `run`;
    keyword arguments (`DataConfig(max_length=100)`, as `flywheel export` and tests pass
    them) override them in its own copy, typed and checked as `--set` values are. The fields
    below are the knobs no run sets:

        deduplicate         remove exact and near-duplicate examples
        chunk_size          examples embedded and compared at a time (memory grows with it,
                            not with the data)
        exact_search_limit  kept examples up to which near duplicates are searched exactly;
                            above, an HNSW index
        workers             processes that clean, measure and scrub examples side by side
                            (1: in this process); default: one per CPU, at most 8
    """

    run: TrainConfig
    deduplicate: bool
    chunk_size: int
    exact_search_limit: int
    workers: int

    def __init__(self, run: TrainConfig | None = None, *, deduplicate: bool = True,
                 chunk_size: int = 2048, exact_search_limit: int = 50_000,
                 workers: int | None = None, **run_settings: Any):
        self.run = update(run or TrainConfig(), run_settings)
        self.deduplicate, self.chunk_size = deduplicate, chunk_size
        self.exact_search_limit = exact_search_limit
        self.workers = min(8, os.cpu_count() or 1) if workers is None else workers


def build_to(db: sqlite_utils.Database, out_dir: Path, config: DataConfig | None = None,
             count_tokens=None, embed=None, formats=FORMATS,
             progress: bool = False) -> DatasetManifest:
    """Write `{fmt}-train.jsonl` and `{fmt}-validation.jsonl` for each of `formats` into
    `out_dir`; return the manifest. `count_tokens(turns)` measures a list of messages in the
    model's tokens (None: no length limit); `embed(texts)` gives normalised sentence
    embeddings (None: all-MiniLM-L6-v2 from its PyPI wheel, uncached)."""
    config = config or DataConfig()
    run = config.run
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drops: Counter[str] = Counter()
    scrubbed: dict[str, Counter[str]] = {}
    if config.deduplicate and embed is None:
        embed = default_embedder()
    raw = {fmt: out_dir / f".{fmt}.raw.jsonl" for fmt in formats}
    kept = {fmt: out_dir / f".{fmt}.kept.jsonl" for fmt in formats}
    counts = _select_and_clean(db, raw, config, count_tokens, drops, scrubbed, progress)
    sets = ConversationSets()
    for fmt in formats:
        if config.deduplicate:
            for conversation, group in deduplicate(
                    raw[fmt], kept[fmt], fmt, counts[fmt], embed, run.near_duplicate_threshold,
                    config.exact_search_limit, config.chunk_size, drops, progress):
                sets.join(conversation, group)
            raw[fmt].unlink()
        else:
            os.replace(raw[fmt], kept[fmt])
    splits = {fmt: split_file(kept[fmt], out_dir, fmt, sets, run.validation_share,
                              config.chunk_size) for fmt in formats}
    sizes = {fmt: m["train"] + m["validation"] for fmt, m in splits.items()}
    needed = run.min_sizes()
    return {"formats": splits, "dropped": dict(drops),
            "scrubbed": {fmt: dict(c) for fmt, c in scrubbed.items()},
            "config": {"max_length": run.max_length,
                       "validation_share": run.validation_share,
                       "near_duplicate_threshold": run.near_duplicate_threshold},
            "missing": {fmt: needed[fmt] - n for fmt, n in sizes.items() if n < needed[fmt]}}


def _select_and_clean(db, raw: dict[str, Path], config: DataConfig, count_tokens,
                      drops: Counter, scrubbed: dict, progress: bool) -> Counter:
    """One pass over the feedback: each example selected, cleaned and (unless an exact copy
    of one before it) written to its format's file. Returns how many per format."""
    files = {fmt: open(path, "w") for fmt, path in raw.items()}
    seen: dict[str, set[bytes]] = {fmt: set() for fmt in raw}
    counts: Counter[str] = Counter()
    try:
        wanted = PhaseBar(selection.examples(db, formats=list(raw)),
                          desc="selecting feedback", unit=" examples", disable=not progress)
        for batch in cleaned(batched(wanted, 512), count_tokens, config.run.max_length,
                             config.workers, drops, scrubbed):
            for fmt, example in batch:
                digest = bytes.fromhex(example["sha256"])
                if config.deduplicate and digest in seen[fmt]:
                    drops[f"{fmt}: exact duplicate"] += 1
                    continue
                seen[fmt].add(digest)
                files[fmt].write(json.dumps(example, ensure_ascii=False) + "\n")
                counts[fmt] += 1
    finally:
        for f in files.values():
            f.close()
    return counts


def build(db: sqlite_utils.Database, config: DataConfig | None = None, count_tokens=None,
          embed=None, formats=FORMATS,
          progress: bool = False) -> tuple[dict, DatasetManifest]:
    """({format: {"train": [...], "validation": [...]}}, manifest): `build_to` into a
    temporary folder, read back into lists (small data and tests)."""
    with tempfile.TemporaryDirectory(prefix="flywheel-data-") as tmp:
        manifest = build_to(db, Path(tmp), config, count_tokens, embed, formats, progress)
        datasets = {fmt: {side: read_jsonl(Path(tmp) / f"{fmt}-{side}.jsonl")
                          for side in ("train", "validation")} for fmt in formats}
    return datasets, manifest
