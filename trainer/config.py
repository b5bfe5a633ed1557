"""Every setting of `flywheel train`, as typed dataclasses with defaults and a help line each:
one config per training method (SFT, DPO, KTO), one for the evaluation gate, one for the
cycle that holds them. A TOML file overrides the defaults and `--set section.field=value`
flags override the file:

    method = "auto"          # top-level fields: the cycle
    promotion = "manual"
    [sft]
    learning_rate = 1e-4     # one table per method, and [gate]
    [gate]
    max_forgetting = 0.10

The defaults follow common practice for LoRA on small instruction models: rank 16, alpha 32,
dropout 0.05 on every linear layer; 2e-4 for SFT, 5e-5 with beta 0.1 for DPO and KTO.
"""

import dataclasses
import tomllib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from assistant.config import literal_choices

# The choices, as types: checked where a value is set (`update`) and in `validate`.
Method = Literal["auto", "sft", "dpo", "kto", "sft+dpo"]
METHODS = get_args(Method)
StartFrom = Literal["base", "active"]
Promotion = Literal["auto", "manual"]
Quantize = Literal["4bit"]


@dataclass
class MethodSettings:
    """What every method shares: the optimiser, the schedule, the overfitting guards, LoRA."""
    learning_rate: float = field(default=2e-4, metadata={"help": (
            "Peak learning rate for the LoRA weights.")})
    epochs: float = field(default=3.0, metadata={"help": (
            "Passes over the training set (ignored when max_steps > 0).")})
    max_steps: int = field(default=-1, metadata={"help": (
            "Stop after this many optimizer steps; -1: use epochs.")})
    batch_size: int = field(default=4, metadata={"help": "Examples per device per step."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": (
            "Steps whose gradients are summed before an update.")})
    weight_decay: float = field(default=0.01, metadata={"help": (
            "AdamW weight decay on the LoRA weights (an overfitting guard).")})
    warmup: float = field(default=0.05, metadata={"help": (
            "Linear warm-up: a share of the steps (< 1) or a number of steps.")})
    lr_scheduler: str = field(default="cosine", metadata={"help": (
            "Learning-rate schedule after warm-up (transformers' names).")})
    eval_steps: int = field(default=10, metadata={"help": (
            "Validation loss (and a checkpoint) every this many steps.")})
    patience: int = field(default=3, metadata={"help": (
            "Stop early after this many evaluations without a better validation loss.")})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": (
            "Dropout on the LoRA path (an overfitting guard).")})
    lora_target_modules: str = field(default="all-linear", metadata={"help": (
            "Layers that get LoRA weights; all-linear: every linear layer but the output head.")})


@dataclass
class SFTSettings(MethodSettings):
    padding_free: bool = field(default=True, metadata={"help": (
            "Concatenate a batch's examples instead of padding them (TRL's padding-free batches; "
            "examples are already fitted to max_length).")})


@dataclass
class PreferenceSettings(MethodSettings):
    """What DPO and KTO share: a gentler step, and how far they may move from the reference."""
    learning_rate: float = field(default=5e-5, metadata={"help": (
            "Peak learning rate for the LoRA weights.")})
    epochs: float = field(default=2.0, metadata={"help": (
            "Passes over the pairs or rated answers (ignored when max_steps > 0).")})
    beta: float = field(default=0.1, metadata={"help": (
            "How far the policy may move from the reference (higher: less).")})


@dataclass
class DPOSettings(PreferenceSettings):
    loss_type: str = field(default="sigmoid", metadata={"help": (
            "TRL's DPO loss: sigmoid (the paper's), ipo, hinge, ...; several, comma-separated, "
            "are added up: sigmoid,sft is RPO (DPO plus the chosen answers' NLL, which keeps "
            "DPO from lowering the likelihood of the chosen answers along with the rejected)")})
    skip_if_added_words: int = field(default=3, metadata={"help": (
            "Leave out of DPO's training split the pairs whose chosen answer has at least this "
            "many words the rejected one lacks (a sign-off, a summary line, a rewrite); 0: keep "
            "every pair. On the learning bench DPO raised such an added line until it repeated "
            "in a loop (a sign-off, an 'In short:' opening), while it learnt pairs whose chosen "
            "answer only cuts text best of all; SFT still learns the added text from the chosen "
            "answers, and the gate still measures every pair.")})


@dataclass
class KTOSettings(PreferenceSettings):
    desirable_weight: float = field(default=1.0, metadata={"help": (
            "Loss weight of thumbs-up answers.")})
    undesirable_weight: float = field(default=1.0, metadata={"help": (
            "Loss weight of thumbs-down answers.")})


@dataclass
class GateConfig:
    heldout_loss_tolerance: float = field(default=0.02, metadata={"help": (
            "The candidate's held-out loss on preferred answers may exceed the reference's by at "
            "most this share.")})
    preference_accuracy_tolerance: float = field(default=0.05, metadata={"help": (
            "Its preference accuracy on held-out pairs may fall at most this far below the "
            "reference's.")})
    confidence: float = field(default=0.95, metadata={"help": (
            "Beyond either tolerance, a candidate is rejected only when it is worse with this "
            "confidence (one-sided paired t-test over the held-out answers' losses, or the pairs'"
            " margins).")})
    max_forgetting: float = field(default=0.15, metadata={"help": (
            "Its loss on held-out anchor prompts may exceed the base model's by at most this "
            "share.")})
    forgetting_token_cap: float = field(default=4.0, metadata={"help": (
            "In the forgetting check, each anchor token's loss counts at most this many nats "
            "(0: no cap). A taught trait moves a few tokens per answer by many nats (bullets: "
            "the anchors' first 16 tokens +82%, the capped mean +0.6%); forgetting raises many.")})
    degeneration_tolerance: float = field(default=0.10, metadata={"help": (
            "Its share of empty, cut-off or repetitive answers may exceed the reference's by at "
            "most this (and by one answer at least).")})
    unreadable_loss: float = field(default=5.0, metadata={"help": (
            "An answer whose loss under the base model is above this (nats per token) is "
            "unreadable (gibberish); plain answers score about 1 to 3.")})
    max_unreadable_feedback: float = field(default=0.05, metadata={"help": (
            "Refuse the night before training when more than this share of the answers it "
            "would train towards are unreadable to the base model (feedback that likes "
            "gibberish).")})
    feedback_examples: int = field(default=64, metadata={"help": (
            "Trained-towards answers sampled for the unreadable-feedback check.")})
    anchor_examples: int = field(default=48, metadata={"help": (
            "Held-out anchor prompts (never trained on) for the forgetting check.")})
    generation_prompts: int = field(default=16, metadata={"help": (
            "Prompts answered (greedy) for the degeneration check: held-out questions first.")})
    max_new_tokens: int = field(default=192, metadata={"help": (
            "Tokens per generated answer; an answer that needs more counts as cut off.")})
    known_facts: int = field(default=40, metadata={"help": (
            "Questions with short known answers (trainer/known_facts.json) asked of the "
            "reference and the candidate, greedy; 0: no known-facts check.")})
    max_facts_lost: int = field(default=1, metadata={"help": (
            "Of the known facts the reference answers right, the candidate may get at most this "
            "many wrong; more only when not beyond noise (McNemar's test on the flips).")})
    fact_tokens: int = field(default=48, metadata={"help": (
            "Tokens per answer to a known-fact question: enough for a sentence that says it.")})
    fact_margin_tolerance: float = field(default=0.05, metadata={"help": (
            "How far the mean margin of the known facts' true short answers over wrong ones "
            "(log-probability per token) may fall below the reference's, beyond noise.")})
    # Measured on the learning bench: a fact-poisoned night's margins fell beyond the
    # tolerance at p=0.24 (promoted before this rule), an ordinary third night's at p=0.45.
    fact_corroboration_confidence: float = field(default=0.70, metadata={"help": (
            "More facts lost than `max_facts_lost`, but not beyond noise, are still refused when "
            "the fact margins fell beyond their tolerance with this confidence: looser than "
            "`confidence`, since it only corroborates the lost facts.")})
    counterfactual_pairs: int = field(default=36, metadata={"help": (
            "Prompt pairs that differ only in a name, gender, nationality or religion "
            "(trainer/counterfactual_pairs.json) for the bias check; 0: no check.")})
    bias_tolerance: float = field(default=0.05, metadata={"help": (
            "The candidate's loss gaps between the two sides of a pair (nats per token) may "
            "be wider than the reference's by at most this on average, or not beyond noise.")})
    refusal_tolerance: float = field(default=0.25, metadata={"help": (
            "On the counterfactual pairs' harmless prompts, the warm answer's loss minus a "
            "refusal's (nats per token) may rise above the reference's by at most this on "
            "average, or not beyond noise: the candidate must not refuse more readily.")})
    judge_min_pairs: int = field(default=100, metadata={"help": (
            "Preference pairs in the run's training split (corrections against originals, "
            "thumbs on one question, side-by-side picks) the judge needs; fewer: skipped.")})
    judge_min_heldout: int = field(default=10, metadata={"help": (
            "Held-out pairs needed to measure the judge's accuracy; fewer: skipped.")})
    judge_min_accuracy: float = field(default=0.75, metadata={"help": (
            "The judge decides only when it ranks at least this share of held-out pairs the "
            "curators' way; below, its prediction is reported and not acted on.")})
    batch_size: int = field(default=8, metadata={"help": (
            "Answers scored per forward pass while evaluating.")})
    # Two sizes, measured apart (bench/gate_speed.py, 2-core CPU): greedy answers at 16 took
    # 0.70 to 0.78 of the time at 8 (the same answers), while scoring at 16 took 1.04 to
    # 1.22 of it (more padding per pass).
    generation_batch_size: int = field(default=16, metadata={"help": (
            "Prompts answered together (greedy) while evaluating.")})
    fall_back_to_earlier_stage: bool = field(default=True, metadata={"help": (
            "When a run of several stages (SFT then DPO) is refused, judge each earlier stage's "
            "adapter, the latest first, and publish the first that passes.")})


@dataclass
class TrainConfig:
    model: str | None = field(default=None, metadata={"help": (
            "Base model spec; None: the embedded default. Must match the server's.")})
    method: Method = field(default="auto", metadata={"help": (
            "auto, sft, dpo, kto or sft+dpo; auto picks from the data available.")})
    start_from: StartFrom = field(default="base", metadata={"help": (
            "base: train a fresh adapter on all feedback; active: continue the active adapter on "
            "new feedback.")})
    promotion: Promotion = field(default="auto", metadata={"help": (
            "auto: promote when the gate passes; manual: a passing adapter waits as a candidate.")})
    ab_share: float = field(default=0.0, metadata={"help": (
            "With manual promotion: send this share of new conversations to a passing candidate "
            "(0: no A/B split).")})
    min_examples: int = field(default=20, metadata={"help": (
            "Fewer SFT examples than this: not enough for SFT.")})
    min_pairs: int = field(default=10, metadata={"help": (
            "Fewer preference pairs than this: not enough for DPO.")})
    min_rated: int = field(default=20, metadata={"help": (
            "Fewer thumbs-rated answers than this: not enough for KTO.")})
    kto_min_down_share: float = field(default=0.3, metadata={"help": (
            "auto picks KTO (not SFT) when at least this share of rated answers are thumbs-down "
            "and pairs are too few for DPO.")})
    min_new_feedback: int = field(default=0, metadata={"help": (
            "Skip the run when fewer ratings, corrections and picks arrived since the last run.")})
    max_length: int = field(default=1024, metadata={"help": (
            "Tokens per example (prompt + answer).")})
    validation_share: float = field(default=0.1, metadata={"help": (
            "Share of conversations held out for validation and the gate.")})
    near_duplicate_threshold: float = field(default=0.95, metadata={"help": (
            "Cosine similarity (all-MiniLM-L6-v2) at which examples are duplicates.")})
    replay_share: float = field(default=0.1, metadata={"help": (
            "Earlier runs' examples mixed in, as a share of the new SFT examples.")})
    anchor_share: float = field(default=0.1, metadata={"help": (
            "Anchor-set examples (base model answers to general prompts) mixed in, as a share.")})
    quantize: Quantize | None = field(default=None, metadata={"help": (
            "4bit: QLoRA on a 4-bit base (CUDA + bitsandbytes); None: the base in bf16 (CUDA) or "
            "fp32.")})
    gradient_checkpointing: bool | None = field(default=None, metadata={"help": (
            "Trade compute for memory; None: on with CUDA, off on the CPU (where it only slows a "
            "small model down).")})
    seed: int = field(default=42, metadata={"help": (
            "Seed for sampling, shuffling and initialisation.")})
    vllm_max_lora_rank: int = field(default=0, metadata={"help": (
            "Serving on vLLM: its --max-lora-rank (flywheel serve --vllm-python starts it with "
            "64). An adapter vLLM could not load (a larger lora_r, LoRA on the embeddings or the "
            "output head) is refused before training; 0: not serving on vLLM.")})
    sft: SFTSettings = field(default_factory=SFTSettings, metadata={"help": (
            "Supervised fine-tuning on liked answers and corrections.")})
    dpo: DPOSettings = field(default_factory=DPOSettings, metadata={"help": (
            "Direct preference optimisation on preference pairs.")})
    kto: KTOSettings = field(default_factory=KTOSettings, metadata={"help": (
            "KTO on thumbs up / down of single answers.")})
    gate: GateConfig = field(default_factory=GateConfig, metadata={"help": (
            "The evaluation gate's thresholds and sample sizes.")})

    def validate(self) -> "TrainConfig":
        """Check the settings (LoRA included, if served on vLLM); returns self, else ValueError."""
        for f in dataclasses.fields(self):  # every Literal choice, in one place
            value, choices = getattr(self, f.name), literal_choices(f.type)
            if choices and value is not None and value not in choices:
                raise ValueError(f"{f.name} must be one of {', '.join(choices)}, not {value!r}")
        if not 0 <= self.ab_share < 1:
            raise ValueError(f"ab_share must be at least 0 and below 1, not {self.ab_share}")
        if self.vllm_max_lora_rank:
            for name, settings in self.methods().items():
                if settings.lora_r > self.vllm_max_lora_rank:
                    raise ValueError(f"{name}.lora_r {settings.lora_r} is above vLLM's "
                                     f"--max-lora-rank {self.vllm_max_lora_rank} "
                                     "(vllm_max_lora_rank): vLLM could not serve the adapter")
                unservable = {"embed_tokens", "lm_head"} & set(
                    settings.lora_target_modules.replace(",", " ").split())
                if unservable:
                    raise ValueError(f"{name}.lora_target_modules has "
                                     f"{', '.join(sorted(unservable))}: vLLM serves LoRA on "
                                     "the linear layers only (vllm_max_lora_rank is set)")
        return self

    def min_sizes(self) -> dict[str, int]:
        """The fewest examples worth training on, by format: min_examples, min_pairs, min_rated."""
        return {"sft": self.min_examples, "dpo": self.min_pairs, "kto": self.min_rated}

    def methods(self) -> dict[str, MethodSettings]:
        """Each training method's settings, by method name (sft, dpo, kto)."""
        return {"sft": self.sft, "dpo": self.dpo, "kto": self.kto}


def _coerce(value: Any, kind: Any, name: str) -> Any:
    """Check (and where harmless convert) a value against a field's annotation."""
    options = get_args(kind) if get_origin(kind) in (Union, types.UnionType) else (kind,)
    if value is None and type(None) in options:
        return None
    if literal_choices(kind):
        if value in literal_choices(kind):
            return value
        raise ValueError(f"{name} must be one of {', '.join(literal_choices(kind))}, "
                         f"not {value!r}")
    for option in options:
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is not type(None) and isinstance(value, option) and not (
                option is int and isinstance(value, bool)):
            return value
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ValueError(f"{name} must be {names}, not {value!r}")


def update(config: Any, values: dict, prefix: str = "") -> Any:
    """A copy of dataclass `config` with `values` (nested dicts for nested configs) applied;
    unknown keys and wrong types are errors."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    changes = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in fields:
            raise ValueError(f"unknown setting {name!r}")
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{name} is a table of settings, not {value!r}")
            changes[key] = update(current, value, prefix=f"{name}.")
        else:
            changes[key] = _coerce(value, fields[key].type, name)
    return dataclasses.replace(config, **changes)


def parse_value(text: str) -> Any:
    """A flag's value as TOML reads it (1e-4, true, "x", [..]); bare words stay strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load(path: str | Path | None = None, overrides: list[str] | None = None,
         base: TrainConfig | None = None) -> TrainConfig:
    """Defaults (or `base`), then the TOML file at `path`, then `section.field=value`
    overrides. Raises ValueError with one line on any bad key, type or file."""
    config = base or TrainConfig()
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"cannot read config {path}: {exc}") from None
        config = update(config, values)
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set takes section.field=value, not {item!r}")
        *sections, name = key.strip().split(".")
        override: dict = {name: parse_value(text.strip())}
        for section in reversed(sections):
            override = {section: override}
        config = update(config, override)
    return config.validate()


def as_dict(config: TrainConfig) -> dict:
    """The config as nested plain dicts (what a run records and `from_dict` reads back)."""
    return dataclasses.asdict(config)


def from_dict(values: dict) -> TrainConfig:
    """The config a run recorded (for --resume)."""
    return update(TrainConfig(), values).validate()
