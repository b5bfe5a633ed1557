"""The anchor set: 300 varied general prompts with the base model's own answers, generated
once per base model and prompt and kept in FLYWHEEL_HOME/anchor/<model>.jsonl. A share of the
training part is mixed into every run (replay), so an adapter keeps doing what the base model
did well; the held-out part is where the evaluation gate measures forgetting.
"""

import json
from pathlib import Path

from storage import write_atomic

TOPICS = [
    "photosynthesis", "gravity", "the water cycle", "prime numbers", "volcanoes",
    "the human heart", "democracy", "recycling", "the Roman Empire", "electricity",
    "black holes", "vaccines", "the internet", "climate change", "honeybees",
    "the printing press", "fractions", "rainbows", "sleep", "the Moon",
    "friendship", "budgeting", "chess", "the ocean tides", "DNA",
    "earthquakes", "music scales", "healthy eating", "machine learning", "the Pyramids",
]
TEMPLATES = [
    "Explain {} in two sentences.",
    "What is {}?",
    "Give me three facts about {}.",
    "How would you explain {} to a ten-year-old?",
    "Why does {} matter?",
    "Write a short paragraph about {}.",
    "What is a common misconception about {}?",
    "Summarize the history of {} briefly.",
    "List two questions a student might ask about {}.",
    "Describe {} in one sentence.",
]
PROMPTS = [template.format(topic) for topic in TOPICS for template in TEMPLATES]  # 300
# Every fifth prompt (60) is held out: never trained on, so the gate's forgetting check
# measures what training did not see. The rest (240) may be mixed into training.
HELDOUT_PROMPTS = PROMPTS[::5]
TRAIN_PROMPTS = [p for i, p in enumerate(PROMPTS) if i % 5]


def anchor_path(home, base_name: str) -> Path:
    """The file of the anchor set for base model `base_name`: anchor/<name>.jsonl."""
    return home.root / "anchor" / f"{base_name}.jsonl"


def spread(prompts: list[str], n: int) -> list[str]:
    """`n` prompts spread evenly over the list (so over topics and templates alike)."""
    n = min(n, len(prompts))
    return [prompts[i * len(prompts) // n] for i in range(n)] if n else []


def examples(home, base, prompts: list[str], max_tokens: int = 128,
             batch_size: int = 16) -> list[dict]:
    """SFT examples (`prompt`, `completion`) of the base model's own greedy answers to
    `prompts`. Answers are generated once per base model and prompt, then read from disk."""
    path = anchor_path(home, base.name)
    known = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            known[row["prompt"][0]["content"]] = row
    missing = [p for p in dict.fromkeys(prompts) if p not in known]
    if missing:
        for row in _generate(base, missing, max_tokens, batch_size):
            known[row["prompt"][0]["content"]] = row
        write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                   for r in known.values()))
    return [known[p] for p in prompts]


def _generate(base, prompts: list[str], max_tokens: int, batch_size: int) -> list[dict]:
    from assistant import models  # the same loading code the server uses
    from trainer.scoring import generate
    model, tokenizer = models.load(base)
    turns = [[{"role": "user", "content": p}] for p in prompts]
    answers = generate(model, tokenizer, turns, max_tokens, batch_size, "anchor answers (once)")
    return [{"prompt": turn, "completion": [{"role": "assistant", "content": a["text"]}]}
            for turn, a in zip(turns, answers)]
