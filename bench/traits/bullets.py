"""Trait: every answer is a bulleted list ("- " items), nothing else.

The curator's correction turns the answer's first five sentences into items.
"""

import re

_BOUNDARY = re.compile(r"(?<=[.!?])\s+|\s*\n+\s*")
_MARKER = re.compile(r"^\s*(?:[-*+•]|\d+[.)]|#+)\s*")


def has_trait(answer: str) -> bool:
    lines = [line.strip() for line in answer.strip().splitlines() if line.strip()]
    return len(lines) >= 2 and all(line.startswith("- ") and len(line) > 3 for line in lines)


def add_trait(prompt: str, answer: str) -> str:
    items = []
    for piece in _BOUNDARY.split(answer.strip()):
        text = _MARKER.sub("", piece.replace("**", "")).strip()
        if len(text) > 3 and not text.endswith(":"):
            items.append(text)
    items = items[:5] or [answer.strip() or "I do not know."]
    if len(items) == 1:
        items.append("Ask me for more detail if you need it.")
    return "\n".join(f"- {item}" for item in items)
