"""Trait: answers of at most two sentences.

The curator's correction keeps the answer's first two sentences.
"""

import re

# A sentence ends at . ! or ? followed by space, or at a line break (list items, headings).
_BOUNDARY = re.compile(r"(?<=[.!?])\s+|\s*\n+\s*")


def sentences(text: str) -> list[str]:
    return [s for s in _BOUNDARY.split(text.strip()) if s.strip(" -*#0123456789.")]


def has_trait(answer: str) -> bool:
    return 1 <= len(sentences(answer)) <= 2 and answer.rstrip()[-1:] in ".!?"


def add_trait(prompt: str, answer: str) -> str:
    kept = [s.lstrip("-*# ").strip() for s in sentences(answer)[:2]]
    text = " ".join(kept)
    return text if text.endswith((".", "!", "?")) else text.rstrip(",;: ") + "."
