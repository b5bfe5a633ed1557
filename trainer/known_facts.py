"""The known-facts check's questions: short questions with short known answers (capitals,
arithmetic, dates, science) shipped with the project (known_facts.json), and how an answer
is marked right. The gate asks them of the reference and the candidate (greedy), and the
candidate may lose at most `GateConfig.max_facts_lost` of those the reference answers right:
a night of fluent corrections that change facts confidently passes every loss-based check,
since the held-out answers are that same feedback.

Greedy answers of a small model flip both ways after any training, so the gate also reads
each fact's margin: how much likelier (mean log-probability per token) the version under
test finds the true short answer than a plausible wrong one shipped beside it ("Lisbon." vs
"Porto."). A style night leaves the margins where they were; a night of confident wrong facts
lowers them across facts it never saw (measured on the learning bench's nights: -0.004 and
-0.165 nats per token over the 40 facts)."""

import json
import re
from pathlib import Path

FACTS_FILE = Path(__file__).with_name("known_facts.json")


def load(limit: int | None = None) -> list[dict]:
    """The shipped facts, each {"question", "answers"} (accepted answers, lower case), the
    first `limit` of them."""
    facts = json.loads(FACTS_FILE.read_text())
    return facts if limit is None else facts[:limit]


def reply_rows(facts: list[dict], key: str) -> list[tuple[list[dict], list[dict]]]:
    """(prompt, answer) rows for the gate's scorer: each question with its short true
    (`key="answer"`) or wrong (`key="wrong"`) reply."""
    return [([{"role": "user", "content": f["question"]}],
             [{"role": "assistant", "content": f"{f[key]}."}]) for f in facts]


def says(answer: str, accepted: list[str]) -> bool:
    """Does `answer` say one of the accepted answers, as a word or number ("100" and "100.0"
    match 100; "14" and "4.5" do not match 4)?"""
    text = answer.lower()
    return any(re.search(rf"(?<![\w.]){re.escape(a)}(\.0+)?(?![\w]|\.\d)", text)
               for a in accepted)

