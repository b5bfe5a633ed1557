"""What the gate measures a run's candidate on, fixed when the run starts (and saved with it,
so a resumed run is judged on the same): held-out preferred answers and pairs, held-out
anchor prompts with the base model's answers, prompts to answer, the answers the run
trains towards, the known-fact questions, the pairs the judge learns from, and the
counterfactual pairs of the bias check. The measuring
itself is trainer/gate.py."""

import json
import random

from assistant import models
from storage import Home, open_db
from trainer import anchor, bias_check, known_facts
from trainer.config import TrainConfig
from trainer.judge import answer_text
from trainer.mixing import REPLAYED

# Sources whose preferred answer is a model's own text (the first of `message_ids`).
WRITTEN_BY_MODEL = ("liked", "scored", "liked_vs_disliked", "side_by_side")


def gate_sets(home: Home, base: models.BaseModel, sets: dict, config: TrainConfig,
              reference: str | None = None) -> dict:
    """What the gate measures on, fixed when the run starts: the validation split's preferred
    answers and pairs, held-out anchor prompts with the base model's answers, and prompts to
    answer (held-out questions first, then held-out anchor prompts). `reference` is the
    adapter the candidate is compared with (None: the base model)."""
    gate = config.gate
    preferred = ([(e, e["completion"]) for e in sets["sft"]["validation"]]
                 + [(e, e["chosen"]) for e in sets["dpo"]["validation"]])
    own = _written_by(home, reference, [e["message_ids"][0] for e, _ in preferred
                                        if e["source"] in WRITTEN_BY_MODEL])
    preferred = [(e, answer) for e, answer in preferred
                 if e["source"] not in WRITTEN_BY_MODEL or e["message_ids"][0] not in own] \
        or preferred
    heldout = [{"prompt": e["prompt"], "completion": answer} for e, answer in preferred]
    heldout = _distinct(heldout)  # a correction is in both: an SFT completion, a DPO chosen
    pairs = [{k: e[k] for k in ("prompt", "chosen", "rejected")}
             for e in sets["dpo"]["validation"]]
    anchors = anchor.examples(home, base, anchor.spread(anchor.HELDOUT_PROMPTS,
                                                        gate.anchor_examples))
    prompts = _distinct([e["prompt"] for side in ("sft", "dpo", "kto")
                         for e in sets[side]["validation"]])
    prompts = prompts[:gate.generation_prompts]
    extra = anchor.spread(anchor.HELDOUT_PROMPTS, gate.generation_prompts - len(prompts))
    prompts += [[{"role": "user", "content": p}] for p in extra]
    # The answers this run trains towards (not replay or anchors), for the readability check.
    feedback = [{"prompt": e["prompt"], "completion": e["completion"]}
                for e in sets["sft"]["train"] if e.get("source") not in REPLAYED]
    feedback += [{"prompt": e["prompt"], "completion": e["chosen"]} for e in sets["dpo"]["train"]]
    feedback = _distinct(feedback)
    if len(feedback) > gate.feedback_examples:
        feedback = random.Random(config.seed).sample(feedback, gate.feedback_examples)
    # The judge's pairs as answer texts: fitted on the train split, measured on validation.
    judge = {side: [(answer_text(e["chosen"]), answer_text(e["rejected"]))
                    for e in sets["dpo"][split]]
             for side, split in (("train", "train"), ("heldout", "validation"))}
    return {"heldout": heldout, "pairs": pairs, "anchor": anchors, "prompts": prompts,
            "feedback": feedback, "facts": known_facts.load(gate.known_facts), "judge": judge,
            "bias": bias_check.load(gate.counterfactual_pairs)}


def _distinct(rows: list) -> list:
    """Rows without repeats, in order."""
    return list({json.dumps(r): r for r in rows}.values())


def _written_by(home: Home, reference: str | None, answer_ids: list[str]) -> set[str]:
    """Those of `answer_ids` that `reference` (an adapter id, None for the base model) wrote.
    The held-out loss leaves out liked answers it wrote, because a model gives its own
    samples a low loss: once most feedback is 👍 on the served adapter's answers, they would
    favour it over any candidate, however good. (If nothing else is held out, they stay.)"""
    from storage import feedback
    with open_db(home) as db:
        return feedback.written_by(db, answer_ids, reference)
