"""The anchor set: 300 varied general prompts with the base model's own answers, generated
once per base model and prompt and kept in FLYWHEEL_HOME/anchor/<model>.jsonl. A share of the
training part is mixed into every run (replay), so an adapter keeps doing what the base model
did well; the held-out part is where the evaluation gate measures forgetting.
"""

import json
import os
from pathlib import Path

from tqdm import tqdm

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
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in known.values()))
        os.replace(tmp, path)
    return [known[p] for p in prompts]


def _generate(base, prompts: list[str], max_tokens: int, batch_size: int) -> list[dict]:
    import torch

    from assistant import models  # the same loading code and padding the server uses
    from assistant.engine import left_pad
    model, tokenizer = models.load(base)
    rows = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="anchor answers (once)",
                      unit="batch"):
        chunk = prompts[start:start + batch_size]
        encoded = [tokenizer.apply_chat_template([{"role": "user", "content": p}],
                                                 add_generation_prompt=True,
                                                 return_dict=True)["input_ids"] for p in chunk]
        pad = tokenizer.pad_token_id
        ids, mask = left_pad(encoded, pad)
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(model.device),
                                 attention_mask=mask.to(model.device), max_new_tokens=max_tokens,
                                 do_sample=False, temperature=None, top_p=None, top_k=None,
                                 pad_token_id=pad)
        for prompt, row in zip(chunk, out[:, ids.shape[1]:]):
            answer = tokenizer.decode(row, skip_special_tokens=True).strip()
            rows.append({"prompt": [{"role": "user", "content": prompt}],
                         "completion": [{"role": "assistant", "content": answer}]})
    return rows
