"""The judge's accuracy: which ranks held-out preference pairs the curators' way more often,
the gate's judge (a linear model on sentence embeddings, trainer/judge.py) or TRL's
RewardTrainer (a reward head and LoRA on the base model)? Prints JSON and a table.

    python bench/judge.py [--trait signoff|brief|bullets|FILE.py] [--train 100] [--heldout 80]

The feedback is the learning benchmark's (bench/learning.py): the base model answers its
training prompts (greedy, batched), and a simulated curator corrects each answer that lacks
the trait; each correction against the answer it corrects is one preference pair, as in the
app. Both judges learn from the first `--train` pairs (the gate's `judge_min_pairs` is 100)
and are scored on the next `--heldout`, with 95% Wilson intervals. Answers that already have
the trait get a thumbs-up and make no pair, so a trait the model often shows needs more
prompts: the bench answers prompts until it has enough pairs or runs out.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from assistant import models  # noqa: E402
from bench.learning_prompts import prompt_sets  # noqa: E402
from bench.learning_traits import load_trait  # noqa: E402
from storage import Home  # noqa: E402
from storage.ab import wilson  # noqa: E402
from trainer import judge  # noqa: E402
from trainer.dedup_pass import default_embedder  # noqa: E402
from trainer.scoring import generate  # noqa: E402

Pair = tuple[str, str, str]  # (prompt, preferred answer, other answer)


def feedback_pairs(model, tokenizer, trait, prompts: list[str], wanted: int, tokens: int,
                   batch: int) -> tuple[list[Pair], int]:
    """(correction pairs, answers given): the base model answers prompts a batch at a time
    until `wanted` answers lacked the trait and were corrected."""
    pairs: list[Pair] = []
    asked = 0
    while len(pairs) < wanted and asked < len(prompts):
        chunk = prompts[asked:asked + batch]
        asked += len(chunk)
        said = generate(model, tokenizer, [[{"role": "user", "content": p}] for p in chunk],
                        tokens, batch, f"answers ({len(pairs)} pairs)")
        for prompt, answer in zip(chunk, said):
            if not trait.has_trait(answer["text"]):
                pairs.append((prompt, trait.add_trait(prompt, answer["text"]), answer["text"]))
    return pairs[:wanted], asked


def embedding_judge(train: list[Pair], heldout: list[Pair]) -> dict:
    """The gate's own judge, fitted and measured as the gate does."""
    started = time.perf_counter()
    fitted = judge.fit(default_embedder(), [(a, b) for _, a, b in train],
                       [(a, b) for _, a, b in heldout])
    right = round(fitted.accuracy * len(heldout))
    return {"accuracy": fitted.accuracy, "interval": wilson(right, len(heldout)),
            "seconds": round(time.perf_counter() - started, 1)}


def reward_model_judge(model_folder: Path, train: list[Pair], heldout: list[Pair],
                       epochs: float, out: Path) -> dict:
    """TRL's RewardTrainer: a scalar head on the base model with LoRA on every linear layer,
    trained on the pairs (conversational), then each held-out pair scored both ways."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    model = AutoModelForSequenceClassification.from_pretrained(model_folder, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id

    def rows(pairs):
        return [{"prompt": [{"role": "user", "content": p}],
                 "chosen": [{"role": "assistant", "content": a}],
                 "rejected": [{"role": "assistant", "content": b}]} for p, a, b in pairs]

    trainer = RewardTrainer(
        model=model, processing_class=tokenizer, train_dataset=Dataset.from_list(rows(train)),
        peft_config=LoraConfig(task_type="SEQ_CLS", r=16, lora_alpha=32,
                               target_modules="all-linear"),
        args=RewardConfig(output_dir=str(out), num_train_epochs=epochs,
                          per_device_train_batch_size=4, learning_rate=2e-4, max_length=1024,
                          save_strategy="no", report_to=[], logging_steps=5,
                          use_cpu=not torch.cuda.is_available()))
    trainer.train()
    trained = time.perf_counter() - started
    scorer = trainer.model.eval()

    @torch.inference_mode()
    def reward(prompt: str, answer: str) -> float:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            return_tensors="pt", return_dict=True)["input_ids"].to(scorer.device)
        return float(scorer(input_ids=ids).logits[0, 0])

    right = sum(reward(p, a) > reward(p, b) for p, a, b in heldout)
    return {"accuracy": round(right / len(heldout), 4), "interval": wilson(right, len(heldout)),
            "seconds": round(time.perf_counter() - started, 1),
            "train_seconds": round(trained, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trait", default="signoff",
                        help="signoff, brief, bullets, or a FILE.py with has_trait/add_trait")
    parser.add_argument("--train", type=int, default=100, help="pairs both judges learn from")
    parser.add_argument("--heldout", type=int, default=80, help="pairs they are scored on")
    parser.add_argument("--tokens", type=int, default=128, help="max tokens per answer")
    parser.add_argument("--batch", type=int, default=16, help="answers generated at once")
    parser.add_argument("--epochs", type=float, default=2.0, help="RewardTrainer's epochs")
    parser.add_argument("--model", default=None, help="base model spec (default: embedded)")
    parser.add_argument("--home", default=None, help="FLYWHEEL_HOME (default: a temp dir)")
    parser.add_argument("--out", default=None, help="JSON path (default: judge-<trait>.json)")
    args = parser.parse_args()
    trait = load_trait(args.trait)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="flywheel-judge-") as scratch:
        home = Home(Path(args.home or scratch))
        base = models.resolve(args.model, home)
        model, tokenizer = models.load(base)
        train_prompts, heldout_prompts = prompt_sets()
        started = time.perf_counter()
        pairs, asked = feedback_pairs(model, tokenizer, trait, train_prompts + heldout_prompts,
                                      args.train + args.heldout, args.tokens, args.batch)
        del model
        if len(pairs) < args.train + 10:
            raise SystemExit(f"only {len(pairs)} of {asked} answers lacked the trait: "
                             f"too few pairs for --train {args.train}")
        train, heldout = pairs[:args.train], pairs[args.train:]
        report = {"trait": trait.name, "model": base.name, "answers": asked,
                  "pairs": {"train": len(train), "heldout": len(heldout)},
                  "feedback_seconds": round(time.perf_counter() - started, 1),
                  "judges": {"embeddings": embedding_judge(train, heldout),
                             "reward_model": reward_model_judge(base.folder, train, heldout,
                                                                args.epochs,
                                                                Path(scratch) / "reward")}}
    out = Path(args.out or f"judge-{trait.name}.json")
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    print(f"\n{'judge':<14}{'accuracy':>9}  {'95% interval':<16}{'seconds':>8}")
    for name, figures in report["judges"].items():
        low, high = figures["interval"]
        print(f"{name:<14}{figures['accuracy']:>9.3f}  [{low:.3f}, {high:.3f}]   "
              f"{figures['seconds']:>8.1f}")


if __name__ == "__main__":
    main()
