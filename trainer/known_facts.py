"""The known-facts check's questions: short questions with short known answers (capitals,
arithmetic, dates, science) shipped with the project (known_facts.json), and how an answer
is marked right. The gate asks them of the reference and the candidate (greedy), and the
candidate may lose at most `GateConfig.max_facts_lost` of those the reference answers right:
a night of fluent corrections that change facts confidently passes every loss-based check,
since the held-out answers are that same feedback."""

import json
import re
from pathlib import Path

FACTS_FILE = Path(__file__).with_name("known_facts.json")


def load(limit: int | None = None) -> list[dict]:
    """The shipped facts, each {"question", "answers"} (accepted answers, lower case), the
    first `limit` of them."""
    facts = json.loads(FACTS_FILE.read_text())
    return facts if limit is None else facts[:limit]


def says(answer: str, accepted: list[str]) -> bool:
    """Does `answer` say one of the accepted answers, as a word or number ("100" and "100.0"
    match 100; "14" and "4.5" do not match 4)?"""
    text = answer.lower()
    return any(re.search(rf"(?<![\w.]){re.escape(a)}(\.0+)?(?![\w]|\.\d)", text)
               for a in accepted)


def lost_beyond(lost: int, gained: int) -> float:
    """p-value of "the candidate loses more facts than it gains" (McNemar's exact test: a
    one-sided binomial test on the facts that flipped); 1.0 when none flipped."""
    from scipy.stats import binomtest
    flipped = lost + gained
    return float(binomtest(lost, flipped, 0.5, alternative="greater").pvalue) if flipped else 1.0
