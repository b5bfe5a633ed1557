"""Training one stage of a run with TRL and a PEFT LoRA adapter: SFT, DPO or KTO.

    pick()          which method(s) the feedback supports, and why
    trainable_pairs()
                    DPO's training pairs, without those whose chosen answer adds words to
                    the rejected one: DPO learns from cuts
    train_stage()   one TRL trainer with the overfitting guards (validation loss every few
                    steps, early stopping with patience, weight decay, LoRA dropout, the best
                    checkpoint kept, not the last) and crash safety (checkpoints; a killed
                    stage resumes from its last complete one)

Loss is on the assistant's answer only: SFT trains on prompt/completion pairs with
completion-only loss (SmolLM2's template has no {% generation %} block), and DPO and KTO score
completions by construction. A stage's finished adapter is written to `<stage>/final` under
a temporary name and renamed, so "the stage is done" is "the folder exists".
"""

import json
import re
import shutil
from difflib import SequenceMatcher
from pathlib import Path

from storage.home import folder_atomically
from trainer.config import MethodSettings, TrainConfig

FIELDS = {"sft": ("prompt", "completion"), "dpo": ("prompt", "chosen", "rejected"),
          "kto": ("prompt", "completion", "label")}


class NotEnoughData(Exception):
    pass


def pick(sizes: dict, config: TrainConfig) -> tuple[list[str], str]:
    """The stages to train and the reason, from the examples each format has (`sizes`:
    sft, dpo, kto, kto_down, the thumbs-down among the rated answers, dpo_left_out, the
    pairs `trainable_pairs` left out, and dpo_train and kto_train, those in the training
    split, when known). Raises NotEnoughData naming what each format lacks."""
    left_out = sizes.get("dpo_left_out", 0)
    note = (f"; {left_out} pairs left out of DPO: their chosen answer adds "
            f"{config.dpo.skip_if_added_words} words or more (dpo.skip_if_added_words)"
            if left_out else "")
    try:
        stages, reason = _pick(sizes, config)
    except NotEnoughData as exc:
        raise NotEnoughData(f"{exc}{note}") from None
    return stages, reason + note


def _pick(sizes: dict, config: TrainConfig) -> tuple[list[str], str]:
    # A format whose training split is empty cannot train, however many it holds out
    # (measured: a night whose 33 training pairs all added words kept 12 validation pairs,
    # picked SFT+DPO, and DPO's trainer failed on an empty dataset).
    trains = {fmt: sizes.get(f"{fmt}_train", sizes[fmt]) > 0 for fmt in ("dpo", "kto")}
    enough = {"sft": sizes["sft"] >= config.min_examples,
              "dpo": sizes["dpo"] >= config.min_pairs and trains["dpo"],
              "kto": (sizes["kto"] >= config.min_rated and 0 < sizes["kto_down"] < sizes["kto"]
                      and trains["kto"])}
    counts = (f"{sizes['sft']} SFT examples, {sizes['dpo']} preference pairs, "
              f"{sizes['kto']} rated answers ({sizes['kto_down']} thumbs-down)")
    if config.method != "auto":
        stages = config.method.split("+")
        lacking = [m for m in stages if not enough[m]]
        if lacking:
            raise NotEnoughData(f"not enough data for {config.method}: {counts}; "
                                + _needs(sizes, config, lacking))
        return stages, f"{config.method} as configured ({counts})"
    down_share = sizes["kto_down"] / sizes["kto"] if sizes["kto"] else 0.0
    if enough["sft"] and enough["dpo"]:
        return ["sft", "dpo"], (f"SFT then DPO: enough answers to imitate and enough pairs to "
                                f"prefer ({counts})")
    if enough["dpo"]:
        return ["dpo"], f"DPO: enough preference pairs, too few SFT examples ({counts})"
    if enough["sft"] and sizes["dpo"] + sizes.get("dpo_left_out", 0) >= config.min_pairs:
        # Not KTO: it learns from the thumbs on the original answers alone, and these
        # corrections are the night's lesson (measured: a night whose corrections taught
        # refusing one group trained KTO and passed the gate having learnt nearly nothing).
        return ["sft"], (f"SFT: the corrections add words, which SFT learns and DPO would "
                         f"repeat in a loop ({counts})")
    if enough["kto"] and down_share >= config.kto_min_down_share:
        return ["kto"], (f"KTO: {down_share:.0%} of rated answers are thumbs-down and there are "
                         f"too few pairs for DPO; KTO learns from both thumbs ({counts})")
    if enough["sft"]:
        return ["sft"], f"SFT: liked answers and corrections, too few pairs for DPO ({counts})"
    if enough["kto"]:
        return ["kto"], f"KTO: thumbs up and down, too few SFT examples or pairs ({counts})"
    raise NotEnoughData(f"not enough training data: {counts}; "
                        + _needs(sizes, config, ["sft", "dpo", "kto"]))


def added_words(pair: dict) -> int:
    """How many words of a pair's chosen answer its rejected answer lacks (case and
    punctuation aside): 0 for a cut, the line's length for a sign-off added."""
    chosen, rejected = (re.findall(r"\w+", pair[k][-1]["content"].lower())
                        for k in ("chosen", "rejected"))
    edits = SequenceMatcher(None, rejected, chosen, autojunk=False).get_opcodes()
    return sum(j2 - j1 for tag, _, _, j1, j2 in edits if tag in ("insert", "replace"))


def trainable_pairs(pairs: list[dict], config: TrainConfig) -> tuple[list[dict], int]:
    """(DPO's training pairs, how many were left out): without the pairs whose chosen answer
    adds words (`dpo.skip_if_added_words`). Only DPO's training loses them: the gate's
    preference accuracy and its judge still learn from and ask about every pair."""
    limit = config.dpo.skip_if_added_words
    kept = [pair for pair in pairs if limit <= 0 or added_words(pair) < limit]
    return kept, len(pairs) - len(kept)


def _needs(sizes: dict, config: TrainConfig, methods: list[str]) -> str:
    need = {"sft": f"SFT needs {config.min_examples}",
            "dpo": f"DPO needs {config.min_pairs} pairs, some in the training split",
            "kto": f"KTO needs {config.min_rated} rated answers with both thumbs, some in "
                   "the training split"}
    return "need at least: " + "; or ".join(need[m] for m in methods)


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint under `folder`. The Trainer writes trainer_state.json
    last, so a checkpoint without a readable one was cut short by a crash: it is removed."""
    found = []
    for path in folder.glob("checkpoint-*") if folder.is_dir() else []:
        try:
            json.loads((path / "trainer_state.json").read_text())
            found.append((int(path.name.split("-")[1]), path))
        except (OSError, ValueError):
            shutil.rmtree(path, ignore_errors=True)
    return max(found)[1] if found else None


def _args(method: str, s: MethodSettings, config: TrainConfig, output_dir: Path, device: str,
          has_eval: bool):
    """TRL's config for `method` from our settings."""
    from trl import DPOConfig, KTOConfig, SFTConfig
    common = dict(
        output_dir=str(output_dir), num_train_epochs=s.epochs, max_steps=s.max_steps,
        learning_rate=s.learning_rate, per_device_train_batch_size=s.batch_size,
        per_device_eval_batch_size=s.batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps, weight_decay=s.weight_decay,
        warmup_steps=s.warmup, lr_scheduler_type=s.lr_scheduler, logging_steps=1,
        eval_strategy="steps" if has_eval else "no", eval_steps=s.eval_steps,
        save_strategy="steps", save_steps=s.eval_steps, save_total_limit=2,
        load_best_model_at_end=has_eval, metric_for_best_model="eval_loss",
        greater_is_better=False, report_to="none", seed=config.seed,
        gradient_checkpointing=(device == "cuda" if config.gradient_checkpointing is None
                                else config.gradient_checkpointing),
        bf16=device == "cuda", use_cpu=device == "cpu", dataloader_pin_memory=device == "cuda",
        ddp_find_unused_parameters=False)
    if method == "sft":
        # Examples are already fitted to max_length by the data pipeline, which is what
        # padding-free batches need (TRL then leaves max_length unenforced).
        return SFTConfig(**common, completion_only_loss=True, padding_free=s.padding_free,
                         max_length=None if s.padding_free else config.max_length)
    if method == "dpo":
        return DPOConfig(**common, beta=s.beta, loss_type=s.loss_type.split(","),
                         max_length=config.max_length)
    return KTOConfig(**common, beta=s.beta, desirable_weight=s.desirable_weight,
                     undesirable_weight=s.undesirable_weight, max_length=config.max_length)


def train_stage(method: str, model, tokenizer, train_rows: list[dict], eval_rows: list[dict],
                config: TrainConfig, stage_dir: Path, device: str, callbacks=()) -> tuple:
    """Train `model` (a base model, or a PeftModel to continue) with `method`; resume from
    the stage's last complete checkpoint if there is one. Returns (PeftModel with the best
    weights, metrics, log history); the main process also writes `stage_dir/final`."""
    import datasets
    from peft import LoraConfig, PeftModel
    from transformers import EarlyStoppingCallback
    from trl import DPOTrainer, KTOTrainer, SFTTrainer

    settings = config.methods()[method]
    keep = FIELDS[method]
    train = datasets.Dataset.from_list([{k: r[k] for k in keep} for r in train_rows])
    evaluation = (datasets.Dataset.from_list([{k: r[k] for k in keep} for r in eval_rows])
                  if eval_rows else None)
    checkpoints = stage_dir / "checkpoints"
    args = _args(method, settings, config, checkpoints, device, evaluation is not None)
    extra = list(callbacks)
    if evaluation is not None:
        extra.append(EarlyStoppingCallback(early_stopping_patience=settings.patience))
    lora = None if isinstance(model, PeftModel) else LoraConfig(
        r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
        target_modules=settings.lora_target_modules, task_type="CAUSAL_LM")
    trainer_class = {"sft": SFTTrainer, "dpo": DPOTrainer, "kto": KTOTrainer}[method]
    trainer = trainer_class(model=model, args=args, train_dataset=train,
                            eval_dataset=evaluation, processing_class=tokenizer,
                            peft_config=lora, callbacks=extra)
    resume = last_checkpoint(checkpoints)
    if resume is not None and trainer.is_world_process_zero():
        print(f"Resuming {method.upper()} from {resume.name}", flush=True)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    state = trainer.state
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    evals = [h["eval_loss"] for h in state.log_history if "eval_loss" in h]
    metrics = {
        "method": method, "steps": state.global_step, "max_steps": state.max_steps,
        "examples": len(train_rows), "validation_examples": len(eval_rows),
        "train_loss": round(result.training_loss, 4),
        "best_eval_loss": None if state.best_metric is None else round(state.best_metric, 4),
        "best_step": state.best_global_step,
        "stopped_early": evaluation is not None and state.global_step < state.max_steps,
        "resumed_from": resume.name if resume else None,
        "processes": trainer.args.world_size, "backend": _backend(),
        "loss_curve": [round(x, 4) for x in losses], "eval_curve": [round(x, 4) for x in evals]}
    if trainer.is_world_process_zero():
        with folder_atomically(stage_dir / "final", replace=True) as tmp:
            trainer.model.save_pretrained(tmp, selected_adapters=["default"])
            (tmp / "log_history.json").write_text(json.dumps(state.log_history, indent=1))
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))
    model = trainer.model
    if "ref" in getattr(model, "peft_config", {}):  # DPO's frozen copy of a trained adapter
        model.delete_adapter("ref")
    return model, metrics, state.log_history


def _backend() -> str | None:
    """The torch.distributed backend training ran on (gloo on CPUs, nccl on GPUs), if any."""
    import torch.distributed as dist
    return dist.get_backend() if dist.is_available() and dist.is_initialized() else None


def stage_result(stage_dir: Path) -> tuple[dict, list[dict]] | None:
    """(metrics, log history) of a finished stage, or None if it did not finish."""
    final = stage_dir / "final"
    if not (final / "adapter_config.json").is_file():
        return None
    return (json.loads((final / "metrics.json").read_text()),
            json.loads((final / "log_history.json").read_text()))
