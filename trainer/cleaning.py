"""Cleaning the selected examples, a batch at a time: drop empty or broken ones, fit each to
the context by dropping the oldest turns (never by cutting the answer), scrub personal data
into typed placeholders (trainer/privacy.py) and hash what is left; in worker processes side
by side, or in this one."""

import functools
import hashlib
import json
from collections import Counter
from typing import Iterable, Iterator

from trainer import privacy
from trainer.selection import ANSWER_KEYS


def example_hash(example: dict) -> str:
    """SHA-256 (hex) of an example's prompt and answers (completion, chosen, rejected, label)."""
    keys = ["prompt", *[k for k in ("completion", "chosen", "rejected", "label") if k in example]]
    text = json.dumps([example[k] for k in keys], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


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


def _scrub(text: str) -> tuple[str, tuple]:
    clean, found = privacy.scrub(text)
    return clean, tuple(found.items())


class Cleaner:
    """Drop broken examples, fit them to the context, scrub them, hash them: a chunk at a
    time, so token counts are taken in batches. Scrubbing is remembered for recent texts:
    an answer's prompt recurs in its SFT, DPO and KTO examples."""

    def __init__(self, count_tokens, max_length: int):
        self.max_length = max_length
        self.drops: Counter[str] = Counter()
        self.scrubbed: dict[str, Counter[str]] = {}
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
                fit = (_fit(e, fmt, self.count, self.max_length)  # the rare long one
                       if sizes[0] + max(sizes[1:]) > self.max_length else e)
                if fit is None:
                    self.drops[f"{fmt}: longer than the context"] += 1
                else:
                    fitted.append((fmt, fit))
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


_worker_cleaner: Cleaner | None = None  # in each worker process


def _start_worker(count_tokens, max_length: int) -> None:
    global _worker_cleaner
    _worker_cleaner = Cleaner(count_tokens, max_length)


def _clean_in_worker(batch: list[tuple[str, dict]]):
    """A batch cleaned in a worker, with what it dropped and scrubbed (then forgotten)."""
    cleaner = _worker_cleaner
    assert cleaner is not None, "_start_worker runs first in every worker"
    done = cleaner.many(batch), dict(cleaner.drops), {f: dict(c) for f, c in
                                                       cleaner.scrubbed.items()}
    cleaner.drops.clear()
    cleaner.scrubbed.clear()
    return done


def cleaned(batches: Iterable[list], count_tokens, max_length: int, workers: int,
            drops: Counter, scrubbed: dict) -> Iterator[list[tuple[str, dict]]]:
    """The batches cleaned, in order: by `workers` processes side by side (forked, so the
    tokenizer and the scrubbing rules are not copied), or here when there is one. What was
    dropped (and why) is counted into `drops`, what was scrubbed into `scrubbed` by format."""
    def merge(found: dict) -> None:
        for fmt, counts in found.items():
            scrubbed.setdefault(fmt, Counter()).update(counts)
    if workers <= 1:
        cleaner = Cleaner(count_tokens, max_length)
        cleaner.drops, cleaner.scrubbed = drops, scrubbed
        yield from map(cleaner.many, batches)
        return
    import multiprocessing
    with multiprocessing.get_context("fork").Pool(
            workers, _start_worker, (count_tokens, max_length)) as pool:
        for examples, dropped, found in pool.imap(_clean_in_worker, batches):
            drops.update(dropped)
            merge(found)
            yield examples
