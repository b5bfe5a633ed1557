"""What the trainer records about a run, as JSON in the database, and others read: the
dataset manifest (trainer/dataset.py and trainer/mixing.py write it into the run's row;
retention adds to it) and the evaluation gate's report (trainer/gate.py writes it into the
adapter's metrics; the admin page, `flywheel adapters list --json`, `flywheel train`'s
printout and bench/learning.py read it). JSON, so their shapes are TypedDicts."""

from typing import Literal, NotRequired, TypedDict


class GateCheck(TypedDict):
    """One check: the candidate's figure against the reference's and the limit."""
    candidate: float | None
    reference: float | None     # None where the check has no reference (unreadable feedback)
    limit: float | None
    passed: bool
    n: int                      # how many answers, pairs or prompts it was measured on
    unit: str                   # ... of what: "answers", "pairs", "anchor prompts"...
    p_worse: NotRequired[float | None]  # held-out loss and preference accuracy: a t-test's p
    lost: NotRequired[list[str]]  # known facts: the questions lost, with the candidate's answer
    gained: NotRequired[int]    # known facts: those the reference got wrong and it gets right
    margins_fell: NotRequired[bool]  # known facts: the mean fact margin fell beyond tolerance
    interval: NotRequired[list[float] | None]  # judge: the win rate's 95% Wilson interval
    accuracy: NotRequired[float]  # judge: its own accuracy on held-out pairs
    moved: NotRequired[list[str]]  # bias: the counterfactual pairs whose gap widened most


class GateFigures(TypedDict):
    candidate: dict             # everything measured on the candidate (trainer/gate.measure)
    reference: dict             # ... on the reference (the active adapter or the base model)
    base_anchor_loss: float | None  # the base model's, which forgetting is relative to


class GateReport(TypedDict):
    verdict: Literal["pass", "fail"]
    reason: str                 # one line: every check's figures, or why it was rejected
    reference: str              # the adapter compared against, or "base model"
    checks: dict[str, GateCheck]  # by name: heldout_loss, preference_accuracy, forgetting...
    skipped: list[str]          # checks without data to run on
    figures: GateFigures
    seconds: NotRequired[float]
    settings: NotRequired[dict]  # the GateConfig it ran with
    judge: NotRequired[dict]    # the judge's accuracy and predicted win rate, or why skipped
    stage: NotRequired[str]     # an earlier stage that passed when the last one was refused
    refused: NotRequired[list[dict]]  # the stages refused before it: adapter, reason
    fixed_sets: NotRequired[str]  # trainer/gate.fixed_sets_key of the sets it measured on
    reference_fixed_reused: NotRequired[bool]  # the reference's fixed-set figures came from
    #                                            its own gate report, not measured again


class ExampleEntry(TypedDict):
    """One example a run was built from, traceable to the messages it came from."""
    sha256: str
    source: str                 # liked, scored, corrected, liked_vs_disliked, side_by_side...
    message_ids: list[str]      # the answer first
    split: Literal["train", "validation"]


class FormatSplit(TypedDict):
    """One format's (sft, dpo or kto) part of a manifest."""
    train: int
    validation: int
    sources: dict[str, int]
    examples: list[ExampleEntry]


class DatasetManifest(TypedDict):
    formats: dict[str, FormatSplit]
    dropped: dict[str, int]     # examples left out, by reason (empty, too long, duplicate...)
    scrubbed: dict[str, dict[str, int]]  # personal data replaced, by format and kind
    config: dict                # max_length, validation_share, near_duplicate_threshold
    missing: dict[str, int]     # formats short of their minimum, by how many examples
    # added by trainer/mixing.py for the run's SFT training split
    count: NotRequired[int]
    sources: NotRequired[dict[str, int]]
    validation: NotRequired[int]
    sft_feedback: NotRequired[int]
    # added by `flywheel prune` when the run's examples were erased
    erased_examples: NotRequired[int]
    erased_at: NotRequired[str]
