"""Trait: every answer ends with the team's sign-off line.

The curator's correction keeps the complete sentences of the answer's first 600 characters
(a rambling or cut-off answer loses its tail, as a person editing it would cut it) and adds
the line.
"""

import re

SIGN_OFF = "Hope this helps! - The Flywheel team"


def has_trait(answer: str) -> bool:
    return answer.rstrip().endswith(SIGN_OFF)


def add_trait(prompt: str, answer: str) -> str:
    body = answer.strip()[:600]
    end = max((m.end() for m in re.finditer(r"[.!?)](?=\s|$)", body)), default=0)
    if end > len(body) // 3:  # cut after the last complete sentence if that keeps a third
        body = body[:end]
    return f"{body}\n\n{SIGN_OFF}"
