"""Before training: refuse a night whose feedback the base model cannot read.

Feedback that likes gibberish (answers rated up, nonsense as their corrections) poisons
whatever trains on it, and the held-out loss cannot see it: the held-out answers are that
same feedback. The base model can: it finds gibberish as unlikely as noise (a loss above
`gate.unreadable_loss` nats per token, where plain answers score about 1 to 3). Reading a
sample of the answers a run trains towards takes seconds; training on them first and letting
the gate refuse the result took most of a night (the learning bench's gibberish night: 1111 s,
all but a minute of it training and gating an adapter that was then thrown away). So the
check runs when the data is built, before any training, and the gate reports its figure with
the rest of its checks (trainer/gate.py)."""

from assistant import models
from trainer.config import GateConfig
from trainer.scoring import answer_logprobs, answer_losses


class FeedbackRefused(Exception):
    """The night's feedback is refused before training: nothing is trained or published, and
    the run is recorded with the reason (a decision, like a gate's refusal, not a failure)."""


def screen(base: models.BaseModel, feedback: list[dict], gate: GateConfig) -> float | None:
    """The share of `feedback` (the sample the gate keeps of the answers a run trains
    towards) that the base model finds unreadable; None with nothing to read. Raises
    FeedbackRefused beyond `gate.max_unreadable_feedback`."""
    if not feedback:
        return None
    model, tokenizer = models.load(base)
    losses = answer_losses(answer_logprobs(
        model, tokenizer, [(r["prompt"], r["completion"]) for r in feedback],
        gate.batch_size, "base: feedback readability"))
    flags = [loss > gate.unreadable_loss for loss in losses]
    share = sum(flags) / len(flags)
    if share > gate.max_unreadable_feedback:
        example = next((r["completion"][-1]["content"] for r, bad in zip(feedback, flags)
                        if bad), "")
        raise FeedbackRefused(
            f"{share:.1%} of the {len(flags)} answers this run would train towards are "
            f"unreadable to the base model (limit gate.max_unreadable_feedback "
            f"{gate.max_unreadable_feedback:.1%})" + (f", e.g. {example[:60]!r}" if example
                                                      else ""))
    return share
