"""Training throughput: Flywheel's SFT configuration against TRL's SFTTrainer with its
defaults, on the same data and model, in one process. Prints JSON.

    python bench/train.py [--home DIR] [--model SPEC] [--steps 10] [--baseline-steps 3]

"TRL defaults" is `SFTTrainer(model, args=SFTConfig(output_dir, max_steps), train_dataset)`:
full fine-tuning, padded batches of 8, gradient checkpointing, bf16 (SFTConfig's defaults; on
a CPU bf16 is emulated and slow, so the CPU run also shows TRL with only bf16=False).
Flywheel's is `trainer.methods.train_stage("sft", ...)` with the defaults of
`trainer.config.SFTSettings`: LoRA r=16 on all linear layers, padding-free batches of 4,
completion-only loss; bf16 and gradient checkpointing on CUDA. Throughput is the number of
real (non-padding) tokens trained on per second, as TRL counts them, over the steps after the
first (which pays for warm-up).

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
from transformers import TrainerCallback  # noqa: E402

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


class Clock(TrainerCallback):
    """(seconds, tokens trained so far) at every logged step, to time steady-state steps."""

    def __init__(self):
        self.points: list[tuple[float, int]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "num_tokens" in logs:
            self.points.append((time.perf_counter(), int(float(logs["num_tokens"]))))


def run_trl_defaults(base, rows, steps: int, workdir: Path, **overrides) -> dict:
    """TRL's SFTTrainer with SFTConfig's defaults (and only `overrides` changed)."""
    import datasets
    from trl import SFTConfig, SFTTrainer
    model, tokenizer = models.load(base)
    model.train()
    args = SFTConfig(output_dir=str(workdir / "trl"), max_steps=steps, report_to="none",
                     save_strategy="no", logging_steps=1,
                     use_cpu=not torch.cuda.is_available(), **overrides)
    clock = Clock()
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=datasets.Dataset.from_list(rows), callbacks=[clock])
    trainer.train()
    setup = (f"full fine-tuning, padded batches, gradient checkpointing "
             f"{args.gradient_checkpointing}")
    return _figures(clock, model, args.per_device_train_batch_size, setup, args.bf16)


def run_flywheel(base, rows, steps: int, workdir: Path) -> dict:
    device, _ = models.pick_device()
    config = update(TrainConfig(), {"sft": {"max_steps": steps}})
    model, tokenizer = models.load(base)
    model.train()
    clock = Clock()
    trained, _, _ = methods.train_stage("sft", model, tokenizer, rows, [], config,
                                     workdir / "flywheel", device, callbacks=[clock])
    checkpointing = device == "cuda" if config.gradient_checkpointing is None \
        else config.gradient_checkpointing
    setup = (f"LoRA r={config.sft.lora_r} all-linear, padding-free {config.sft.padding_free}, "
             f"gradient checkpointing {checkpointing}")
    return _figures(clock, trained, config.sft.batch_size, setup, device == "cuda")


def _figures(clock: Clock, model, batch_size: int, setup: str, bf16: bool) -> dict:
    """Throughput over the steps after the first (which pays for warm-up)."""
    (t0, n0), (t1, n1) = clock.points[0], clock.points[-1]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"setup": setup, "batch_size": batch_size, "bf16": bool(bf16),
            "trainable_parameters": trainable, "timed_steps": len(clock.points) - 1,
            "tokens": n1 - n0, "seconds": round(t1 - t0, 2),
            "tokens_per_s": round((n1 - n0) / (t1 - t0), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", help="FLYWHEEL_HOME holding the converted model cache")
    p.add_argument("--model", help="base model spec (default: the embedded SmolLM2)")
    p.add_argument("--steps", type=int, default=10, help="steps of Flywheel's configuration")
    p.add_argument("--baseline-steps", type=int, default=3,
                   help="steps of each TRL baseline (slow on a CPU); the first is not timed")
    p.add_argument("--examples", type=int, default=256)
    args = p.parse_args()
    home = Home.resolve(args.home)
    base = models.resolve(args.model, home)
    rows = make_data(args.examples)
    device, _ = models.pick_device()
    with tempfile.TemporaryDirectory() as tmp:
        ours = run_flywheel(base, rows, args.steps, Path(tmp))
        trl = run_trl_defaults(base, rows, args.baseline_steps, Path(tmp))
        # On a CPU, SFTConfig's bf16=True default is what costs most: show TRL with just
        # that changed too, so the rest of the difference (LoRA, batching) is visible.
        fp32 = (run_trl_defaults(base, rows, args.baseline_steps, Path(tmp), bf16=False)
                if device == "cpu" else None)
    report = {"model": base.name, "device": device,
              "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
              "examples": len(rows), "flywheel_sft": ours, "trl_sft_defaults": trl,
              "tokens_per_s_ratio": round(ours["tokens_per_s"] / trl["tokens_per_s"], 2)}
    if fp32:
        report["trl_sft_defaults_fp32"] = fp32
        report["tokens_per_s_ratio_vs_fp32"] = round(ours["tokens_per_s"] / fp32["tokens_per_s"], 2)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
