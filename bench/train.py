"""Training throughput: Flywheel's SFT configuration against TRL's SFTTrainer with its
defaults, on the same data and model, in one process. Prints JSON.

    python bench/train.py [--home DIR] [--model SPEC] [--steps 20] [--examples 256]

"TRL defaults" is `SFTTrainer(model, args=SFTConfig(output_dir, max_steps), train_dataset)`:
full fine-tuning, padded batches of 8, fp32 on the CPU (bf16 on CUDA where TRL picks it).
Flywheel's is `trainer.methods.train_stage("sft", ...)` with the defaults of
`trainer.config.SFTSettings`: LoRA r=16 on all linear layers, padding-free batches of 4,
completion-only loss; bf16 and gradient checkpointing on CUDA. Throughput is the number of
real (non-padding) tokens trained on per second of `train()`, as TRL counts them.

The data is the anchor prompts with answers of varied length (20 to 300 tokens), made up
here so the bench needs no feedback database: lengths, not words, decide the speed.
"""

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from assistant import models  # noqa: E402
from storage import Home  # noqa: E402
from trainer import anchor, methods  # noqa: E402
from trainer.config import TrainConfig, update  # noqa: E402

WORDS = ("the model learns from feedback that people give it every day and the adapter "
         "improves while the base model keeps what it knew before").split()


def make_data(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        length = rng.randint(15, 220)  # words; about 20 to 300 tokens
        answer = " ".join(rng.choice(WORDS) for _ in range(length)).capitalize() + "."
        rows.append({"prompt": [{"role": "user", "content": anchor.PROMPTS[i % 300]}],
                     "completion": [{"role": "assistant", "content": answer}]})
    return rows


def tokens_seen(log_history: list[dict]) -> int:
    return int(max((h.get("num_tokens", 0) for h in log_history), default=0))


def run_trl_defaults(base, rows, steps: int, workdir: Path) -> dict:
    import datasets
    from trl import SFTConfig, SFTTrainer
    model, tokenizer = models.load(base)
    model.train()
    args = SFTConfig(output_dir=str(workdir / "trl"), max_steps=steps, report_to="none",
                     save_strategy="no", logging_steps=1,
                     use_cpu=not torch.cuda.is_available())
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=datasets.Dataset.from_list(rows))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return _figures(trainer.state.log_history, seconds, model, args.per_device_train_batch_size,
                    "full fine-tuning, padded batches", args.bf16)


def run_flywheel(base, rows, steps: int, workdir: Path) -> dict:
    device, _ = models.pick_device()
    config = update(TrainConfig(), {"sft": {"max_steps": steps}})
    model, tokenizer = models.load(base)
    model.train()
    started = time.perf_counter()
    trained, metrics = methods.train_stage("sft", model, tokenizer, rows, [], config,
                                           workdir / "flywheel", device)
    seconds = time.perf_counter() - started
    history = json.loads((workdir / "flywheel" / "final" / "log_history.json").read_text())
    return _figures(history, seconds, trained, config.sft.batch_size,
                    f"LoRA r={config.sft.lora_r} all-linear, padding-free="
                    f"{config.sft.padding_free}", device == "cuda")


def _figures(history: list[dict], seconds: float, model, batch_size: int, setup: str,
             bf16: bool) -> dict:
    tokens = tokens_seen(history)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"setup": setup, "batch_size": batch_size, "bf16": bool(bf16),
            "trainable_parameters": trainable, "tokens": tokens,
            "train_seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", help="FLYWHEEL_HOME holding the converted model cache")
    p.add_argument("--model", help="base model spec (default: the embedded SmolLM2)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--examples", type=int, default=256)
    args = p.parse_args()
    home = Home.resolve(args.home)
    base = models.resolve(args.model, home)
    rows = make_data(args.examples)
    device, _ = models.pick_device()
    with tempfile.TemporaryDirectory() as tmp:
        trl = run_trl_defaults(base, rows, args.steps, Path(tmp))
        ours = run_flywheel(base, rows, args.steps, Path(tmp))
    report = {"model": base.name, "device": device,
              "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
              "steps": args.steps, "examples": len(rows), "trl_sft_defaults": trl,
              "flywheel_sft": ours,
              "tokens_per_s_ratio": round(ours["tokens_per_s"] / trl["tokens_per_s"], 2)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
