"""`flywheel train`: one cycle from feedback to a served adapter.

    feedback in SQLite -> SFT dataset -> LoRA with TRL's SFTTrainer -> adapter folder
    (staged, then renamed into place) -> adapter + run rows -> promoted to active

The base model is resolved and loaded by `assistant.models`, the same code the server uses,
so the adapter is trained on exactly the weights it will be served on.
"""

import json
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from assistant import models
from storage import Home, init_db, open_db
from storage import adapters, runs
from storage import chat as store


@dataclass
class TrainConfig:
    model: str | None = field(default=None, metadata={"help": "Base model spec; None: the embedded default."})
    min_examples: int = field(default=20, metadata={"help": "Refuse to train on fewer SFT examples than this."})
    epochs: float = field(default=3.0, metadata={"help": "Passes over the dataset (ignored when max_steps > 0)."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimizer steps; -1: use epochs."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate for the LoRA weights."})
    batch_size: int = field(default=4, metadata={"help": "Examples per device per step."})
    max_length: int = field(default=1024, metadata={"help": "Tokens per example (prompt + answer)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA path."})
    gradient_checkpointing: bool | None = field(default=None, metadata={"help": "Trade compute for memory; None: on with CUDA, off on the CPU (where it only slows a small model down)."})
    seed: int = field(default=42, metadata={"help": "Seed for shuffling and initialisation."})
    promote: bool = field(default=True, metadata={"help": "Make the new adapter active when training succeeds."})
    validation_share: float = field(default=0.1, metadata={"help": "Share of conversations held out for validation."})
    near_duplicate_threshold: float = field(default=0.95, metadata={"help": "Cosine similarity (all-MiniLM-L6-v2) at which examples are duplicates."})
    replay_share: float = field(default=0.1, metadata={"help": "Earlier runs' examples mixed in, as a share of the new training examples."})
    anchor_share: float = field(default=0.1, metadata={"help": "Anchor-set examples (base model answers to general prompts) mixed in, as a share."})


class NotEnoughData(Exception):
    pass


def run_cycle(home: Home, config: TrainConfig) -> dict:
    """Train, publish and (by default) promote one adapter; returns the adapter row.
    Raises NotEnoughData, having changed nothing, when the feedback is too thin."""
    init_db(home)
    base = models.resolve(config.model, home)
    examples, data_manifest = training_data(home, base, config)
    print(f"Dataset: {len(examples)} SFT examples {data_manifest['sources']}", flush=True)
    adapter_id = adapters.new_adapter_id()
    with open_db(home) as db:
        active = adapters.active(db)
        run_id = runs.start(db, base_model=base.name, method="sft", config=asdict(config),
                            manifest=data_manifest)
    workdir = home.runs_dir / run_id
    _save_examples(workdir / REPLAY_FILE, [e for e in examples if e["source"] not in REPLAYED])
    try:
        started = time.perf_counter()
        metrics = _train_sft(base, examples, config, workdir, home, adapter_id)
        metrics["train_seconds"] = round(time.perf_counter() - started, 1)
        with open_db(home) as db:
            row = adapters.publish(db, home, adapter_id, base_model=base.name, method="sft",
                                   run_id=run_id, metrics=metrics)
            runs.finish(db, run_id, metrics=metrics, adapter_id=adapter_id)
            if config.promote:
                row = adapters.promote(db, adapter_id, reason=f"trained by {run_id}")
    except BaseException as exc:
        shutil.rmtree(home.staging_dir / adapter_id, ignore_errors=True)
        with open_db(home) as db:
            runs.fail(db, run_id, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
    replaced = active["id"] if active else "the base model"
    print(f"Adapter {adapter_id}: status {row['status']}"
          + (f" (replaces {replaced})" if config.promote else ""), flush=True)
    return row


REPLAY_FILE = "sft-train.jsonl"  # a run's own feedback examples, replayed by later runs
REPLAYED = ("replay", "anchor")


def training_data(home: Home, base: models.BaseModel, config: TrainConfig) -> tuple[list, dict]:
    """The SFT training split, cleaned, scrubbed and deduplicated, with a share of earlier
    runs' data and of the anchor set mixed in; and its manifest. Raises NotEnoughData."""
    import random

    from trainer import anchor, selection
    from trainer.dataset import DataConfig, build, example_hash, token_counter

    data_config = DataConfig(max_length=config.max_length,
                             validation_share=config.validation_share,
                             near_duplicate_threshold=config.near_duplicate_threshold)
    data_config.min_examples["sft"] = config.min_examples
    count_tokens = token_counter(base.folder)
    with open_db(home) as db:
        datasets, data_manifest = build(db, data_config, count_tokens=count_tokens)
        counts = store.feedback_counts(db)
    sft = datasets["sft"]
    total = len(sft["train"]) + len(sft["validation"])
    if total < config.min_examples or not sft["train"]:
        missing = ", ".join(f"{fmt} needs {n} more" for fmt, n in data_manifest["missing"].items())
        raise NotEnoughData(
            f"not enough training data: {total} SFT examples (from {counts['up']} liked "
            f"answers and {counts['corrections']} corrections), need at least "
            f"{config.min_examples}; missing: {missing or 'nothing else'}")
    train = [{**e, "message_id": e["message_ids"][0]} for e in sft["train"]]
    rng = random.Random(config.seed)
    # Replay: earlier runs' examples that this run's data no longer holds, as long as their
    # answer may still be trained on (not flagged, consent given, not held out). With the
    # default (all accumulated feedback) that is rare; it matters when a run trains on new
    # feedback only, continuing from the active adapter.
    with open_db(home) as db:
        blocked = selection.excluded_messages(db)
    held_out = {i for e in sft["validation"] for i in e["message_ids"]}
    seen = {e["sha256"] for e in train}
    earlier = [e for path in sorted(home.runs_dir.glob(f"*/{REPLAY_FILE}"))
               for e in _load_examples(path) if e["sha256"] not in seen
               and e["message_id"] not in blocked | held_out]
    earlier = list({e["sha256"]: e for e in earlier}.values())
    replay = rng.sample(earlier, min(len(earlier), round(config.replay_share * len(train))))
    anchors = []
    n_anchor = round(config.anchor_share * len(train))
    if n_anchor:
        pool = anchor.load_or_make(home, base)
        anchors = [{**a, "source": "anchor", "message_id": None}
                   for a in rng.sample(pool, min(n_anchor, len(pool)))]
    mixed = train + [{**e, "source": "replay"} for e in replay] + anchors
    for e in mixed:
        e.setdefault("sha256", example_hash(e))
    data_manifest.update(count=len(mixed), sources=dict(Counter(e["source"] for e in mixed)),
                         validation=len(sft["validation"]))
    return mixed, data_manifest


def _save_examples(path, examples: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keep = ("prompt", "completion", "source", "message_id", "sha256")
    path.write_text("".join(json.dumps({k: e.get(k) for k in keep}, ensure_ascii=False) + "\n"
                            for e in examples))


def _load_examples(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _train_sft(base: models.BaseModel, examples: list[dict], config: TrainConfig, workdir,
               home: Home, adapter_id: str) -> dict:
    import datasets
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = models.load(base)
    model.train()
    device, _ = models.pick_device()
    data = datasets.Dataset.from_list([{"prompt": e["prompt"], "completion": e["completion"]}
                                       for e in examples])
    args = SFTConfig(
        output_dir=str(workdir / "checkpoints"),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        max_length=config.max_length,
        completion_only_loss=True,  # SmolLM2's template has no {% generation %} block
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=config.seed,
        gradient_checkpointing=(device == "cuda" if config.gradient_checkpointing is None
                                else config.gradient_checkpointing),
        bf16=device == "cuda",
        use_cpu=device == "cpu",
        dataloader_pin_memory=device == "cuda",
    )
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=lora)
    result = trainer.train()
    staging = adapters.staging_path(home, adapter_id)
    trainer.model.save_pretrained(staging)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    return {"train_loss": round(result.training_loss, 4), "steps": result.global_step,
            "examples": len(examples), "loss_curve": [round(x, 4) for x in losses]}
