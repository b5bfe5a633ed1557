"""The anchor set: a few hundred varied general prompts with the base model's own answers,
generated once per base model and stored under FLYWHEEL_HOME/anchor/. A share of it is mixed
into every training run (replay), so an adapter keeps doing what the base model did well;
issue 6's gate also measures forgetting on it.
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


def anchor_path(home, base_name: str, size: int) -> Path:
    return home.root / "anchor" / f"{base_name}-{size}.jsonl"


def load_or_make(home, base, size: int = len(PROMPTS), max_tokens: int = 128,
                 batch_size: int = 16) -> list[dict]:
    """The anchor set for `base` as SFT examples (`prompt`, `completion`); made once with
    greedy decoding by the base model itself, then read from disk."""
    path = anchor_path(home, base.name, size)
    if path.is_file():
        return [json.loads(line) for line in path.read_text().splitlines()]
    import torch

    from assistant import models  # the same loading code and padding the server uses
    from assistant.engine import left_pad
    model, tokenizer = models.load(base)
    prompts = PROMPTS[:size]
    rows = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="anchor set (once)", unit="batch"):
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    os.replace(tmp, path)
    return rows
