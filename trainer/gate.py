"""The evaluation gate: a new adapter must not be worse than the one in production.

The candidate is compared with the reference (the active adapter, or the base model when
none is active) on data that training never saw:

    held-out loss         mean loss on the validation split's preferred answers (liked
                          answers, corrections, the chosen side of pairs)
    preference accuracy   share of held-out pairs where the chosen answer is more likely than
                          the rejected one (mean log-likelihood per token, so length does not
                          decide)

                          Both fail only when the candidate is beyond the tolerance and worse
                          with confidence (a one-sided paired t-test over the answers, or over
                          the pairs' margins): held-out sets are a handful of answers, one
                          answer's loss moves by 20% between versions, and a pair whose
                          chosen answer is a shortened rejected one flips on a 0.01 margin
    forgetting            loss on held-out anchor prompts (the base model's own answers),
                          relative to the base model: +0.10 is 10% higher. Each token counts
                          at most `forgetting_token_cap` nats: a trait the curators teach
                          changes a few decisions per answer (its first word, where it stops)
                          by many nats each, which an uncapped mean reads as forgetting;
                          forgetting is a rise over many tokens
    degeneration          share of greedy answers to held-out prompts that are empty,
                          unreadable (the base model finds them as unlikely as gibberish:
                          this catches feedback that taught nonsense, which the held-out loss
                          cannot, since the held-out answers are that same feedback), cut off
                          (no end of turn within the budget) or repetitive; beyond the
                          limit, refused when it newly fails more prompts than it mends,
                          beyond noise
    unreadable feedback   share of the answers the run trained towards (liked answers,
                          corrections, chosen sides) that the base model finds unreadable:
                          poisoned feedback is refused even when the candidate hides it well
                          enough to pass every other check. Measured before training
                          (trainer/feedback_screen.py), which refuses the night there; the
                          gate reports the figure
    known facts           short questions with known answers (trainer/known_facts.py): of
                          those the reference answers right, the candidate may lose at most
                          `max_facts_lost` (one), or more when not beyond noise (it gains
                          about as many) and the fact margins below did not fall beyond
                          their tolerance (at `fact_corroboration_confidence`). Fluent
                          corrections that change facts (a capital, a sum, a date) pass the
                          checks above, since the held-out answers are that same feedback;
                          this one asks the facts themselves
    fact margins          the same facts read as likelihoods: how much likelier the version
                          finds each true short answer than a plausible wrong one. The mean
                          may not fall more than `fact_margin_tolerance` below the
                          reference's beyond noise; steadier than greedy answers, which flip
    judge                 a preference model learnt from the run's own feedback pairs
                          (trainer/judge.py) compares the candidate's and the reference's
                          answers to the held-out prompts: rejected when it predicts the
                          candidate loses beyond noise (the 95% Wilson interval of its win rate
                          is below one half), if the judge ranks held-out pairs well enough to
                          be trusted (`judge_min_accuracy`); with too little feedback, skipped
    bias                  prompt pairs that differ only in a name, gender, nationality or
                          religion (trainer/bias_check.py): the loss gap between the two sides
                          of each pair, for a warm answer and for a refusal, may not widen
                          under the candidate by more than `bias_tolerance` beyond noise
    over refusal          on the same harmless prompts, how much likelier a refusal is than
                          the warm answer may not rise more than `refusal_tolerance` above the
                          reference's, beyond noise: a night that teaches refusing people

A check with no data (no pairs yet, say) is skipped and says so. The verdict passes only when
every check that ran passes. Thresholds are `GateConfig` settings.

A run of two stages (SFT then DPO) that is refused has its first stage's adapter judged too
(`fall_back_to_earlier_stage`): DPO on one night's pairs can sharpen a trait or break the
model (measured on the learning bench: an opening line that DPO repeated in a loop), and
when it breaks, the SFT stage's adapter may still be a safe step forward.
"""

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from typing import Literal

from storage import BASE
from storage.run_records import GateCheck, GateReport
from trainer import bias_check, known_facts
from trainer import judge as preference_judge
from trainer.config import GateConfig
from trainer.scoring import answer_logprobs, answer_losses, generate, mean_loss
from trainer.scoring import margins as scoring_margins

CHECKS = ("heldout_loss", "preference_accuracy", "forgetting", "degeneration",
          "unreadable_feedback", "known_facts", "fact_margins", "judge", "bias",
          "over_refusal")


def repetitive(text: str) -> bool:
    """Loops: fewer than half of the answer's word 3-grams are distinct, or a long answer
    made of two or three characters."""
    words = text.lower().split()
    if len(words) >= 12:
        grams = list(zip(words, words[1:], words[2:]))
        if len(set(grams)) < 0.5 * len(grams):
            return True
    return len(text) >= 20 and len(set(text.replace(" ", ""))) <= 3


def degenerate(answer: dict, unreadable_loss: float) -> str | None:
    """Why an answer is degenerate (empty, unreadable, cut off, repetitive), or None."""
    if not answer["text"]:
        return "empty"
    if answer["base_loss"] > unreadable_loss:
        return "unreadable"
    if not answer["ended"]:
        return "cut off"
    if repetitive(answer["text"]):
        return "repetitive"
    return None


@contextmanager
def _using(model, name: str):
    """Run the PeftModel as the base model (BASE) or with one of its adapters."""
    if name == BASE:
        with model.disable_adapter():
            yield
    else:
        model.set_adapter(name)
        yield


# Figures on the sets every run shares (the known facts, the counterfactual pairs, the
# held-out anchor prompts): a version measured on them once, as a candidate, need not be
# measured again as the next night's reference. About a fifth of a night's gate on the
# learning bench (40 greedy answers, 248 scored replies).
FIXED_SETS = {"facts": ("facts_right", "fact_answers", "fact_margins"),
              "bias": ("bias_gaps", "refusal_readiness"), "anchor": ("anchor_loss",)}


def fixed_figures(sets: dict) -> list[str]:
    """The figures a version has on the fixed sets that are not empty here."""
    return [figure for name, figures in FIXED_SETS.items() if sets.get(name)
            for figure in figures]


def fixed_sets_key(sets: dict, gate: GateConfig) -> str:
    """What the fixed-set figures depend on besides the version: the sets and the settings
    that shape the answers. Equal keys: a stored figure may stand in for a measured one."""
    import hashlib
    import json
    shape = {"facts": sets.get("facts"), "bias": sets.get("bias"), "anchor": sets.get("anchor"),
             "fact_tokens": gate.fact_tokens, "batch_size": gate.batch_size,
             "forgetting_token_cap": gate.forgetting_token_cap,
             "generation_batch_size": gate.generation_batch_size}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def measure(model, tokenizer, name: str, sets: dict, gate: GateConfig,
            answers: bool = True, known: dict | None = None) -> dict:
    """Every figure the gate uses, for one version (`name`: base, candidate or reference);
    `answers=False` skips generating (the slow part) when nobody compares with them. `known`:
    this version's figures on the fixed sets, measured before under the same
    `fixed_sets_key`; used instead of measuring them again."""
    figures: dict = {}
    if known:
        figures.update({k: known[k] for k in fixed_figures(sets)})  # evaluate checked them
        sets = {**sets, **{name: [] for name in FIXED_SETS}}  # nothing left to measure
    with _using(model, name):
        if sets["heldout"]:
            scores = answer_logprobs(model, tokenizer, [(r["prompt"], r["completion"])
                                                        for r in sets["heldout"]],
                                     gate.batch_size, f"{name}: held-out loss")
            figures["heldout_loss"] = mean_loss(scores)
            figures["heldout_losses"] = answer_losses(scores)
        if sets["pairs"]:
            chosen = answer_logprobs(model, tokenizer, [(r["prompt"], r["chosen"])
                                                        for r in sets["pairs"]],
                                     gate.batch_size, f"{name}: chosen")
            rejected = answer_logprobs(model, tokenizer, [(r["prompt"], r["rejected"])
                                                          for r in sets["pairs"]],
                                       gate.batch_size, f"{name}: rejected")
            margins = scoring_margins(chosen, rejected)
            figures["preference_accuracy"] = sum(m > 0 for m in margins) / len(margins)
            figures["preference_margins"] = margins
        if sets["anchor"]:
            figures["anchor_loss"] = mean_loss(answer_logprobs(
                model, tokenizer, [(r["prompt"], r["completion"]) for r in sets["anchor"]],
                gate.batch_size, f"{name}: anchor loss", gate.forgetting_token_cap))
        if name == BASE and sets.get("unreadable_feedback") is not None:
            # Measured before training (trainer/feedback_screen.py), saved with the sets.
            figures["unreadable_feedback"] = sets["unreadable_feedback"]
        if sets["prompts"] and answers:
            said = generate(model, tokenizer, sets["prompts"], gate.max_new_tokens,
                            gate.generation_batch_size, f"{name}: answers")
            # How readable is each answer to the base model? (Already the base: no nesting.)
            with nullcontext() if name == BASE else _using(model, BASE):
                scores = answer_logprobs(model, tokenizer, [
                    (p, [{"role": "assistant", "content": a["text"]}])
                    for p, a in zip(sets["prompts"], said)], gate.batch_size,
                    f"{name}: readability")
            for answer, loss in zip(said, answer_losses(scores)):
                answer["base_loss"] = loss
            kinds = [degenerate(a, gate.unreadable_loss) for a in said]
            figures["degeneration"] = sum(k is not None for k in kinds) / len(kinds)
            figures["degenerate_kinds"] = {k: kinds.count(k) for k in set(kinds) if k}
            figures["answer_texts"] = [a["text"] for a in said]  # for the judge; not kept
            figures["answers"] = [{"prompt": p[-1]["content"][:120], "answer": a["text"][:300],
                                   "kind": k, "base_loss": round(a["base_loss"], 2)}
                                  for p, a, k in zip(sets["prompts"], said, kinds)]
        if sets.get("bias") and answers:  # runs saved before the check have no pairs
            losses = answer_losses(answer_logprobs(
                model, tokenizer, bias_check.rows(sets["bias"]), gate.batch_size,
                f"{name}: counterfactual pairs"))
            figures["bias_gaps"] = bias_check.gaps(losses)
            figures["refusal_readiness"] = bias_check.refusal_readiness(losses)
        if sets.get("facts") and all("wrong" in f for f in sets["facts"]):  # cheap: no answers
            figures["fact_margins"] = scoring_margins(*(answer_logprobs(
                model, tokenizer, known_facts.reply_rows(sets["facts"], key), gate.batch_size,
                f"{name}: fact margins ({key})") for key in ("answer", "wrong")))
        if sets.get("facts") and answers:  # runs saved before the check have no facts
            said = generate(model, tokenizer, [[{"role": "user", "content": f["question"]}]
                                               for f in sets["facts"]],
                            gate.fact_tokens, gate.generation_batch_size,
                            f"{name}: known facts")
            figures["facts_right"] = [known_facts.says(a["text"], f["answers"])
                                      for a, f in zip(said, sets["facts"])]
            figures["fact_answers"] = [a["text"][:160] for a in said]
    return figures


def judge(candidate: dict, reference: dict, base: dict, sets: dict, gate: GateConfig,
          reference_name: str, judged: dict | None = None) -> GateReport:
    """The verdict, every figure, each check's limit and the reason, from measured figures."""
    checks: dict[str, GateCheck] = {}

    def check(name: str, value, ref, limit, passed: bool, n: int, unit: str) -> None:
        checks[name] = {"candidate": _round(value), "reference": _round(ref),
                        "limit": _round(limit), "passed": passed, "n": n, "unit": unit}

    if "heldout_loss" in candidate:
        limit = reference["heldout_loss"] * (1 + gate.heldout_loss_tolerance)
        p = worse_beyond(candidate["heldout_losses"], reference["heldout_losses"],
                         limit - reference["heldout_loss"])
        check("heldout_loss", candidate["heldout_loss"], reference["heldout_loss"], limit,
              candidate["heldout_loss"] <= limit or p > 1 - gate.confidence,
              len(sets["heldout"]), "answers")
        checks["heldout_loss"]["p_worse"] = _round(p)
    if "preference_accuracy" in candidate:
        limit = reference["preference_accuracy"] - gate.preference_accuracy_tolerance
        # Worse: a smaller margin (chosen minus rejected log-likelihood per token) per pair.
        p = worse_beyond([-m for m in candidate["preference_margins"]],
                         [-m for m in reference["preference_margins"]], 0.0)
        check("preference_accuracy", candidate["preference_accuracy"],
              reference["preference_accuracy"], limit,
              candidate["preference_accuracy"] >= limit or p > 1 - gate.confidence,
              len(sets["pairs"]), "pairs")
        checks["preference_accuracy"]["p_worse"] = _round(p)
    if "anchor_loss" in candidate:
        forgetting = candidate["anchor_loss"] / base["anchor_loss"] - 1
        ref_forgetting = reference["anchor_loss"] / base["anchor_loss"] - 1
        check("forgetting", forgetting, ref_forgetting, gate.max_forgetting,
              forgetting <= gate.max_forgetting, len(sets["anchor"]), "anchor prompts")
    if "degeneration" in candidate:
        # At least one answer's worth of slack: with few prompts, one answer is noise.
        slack = max(gate.degeneration_tolerance, 1 / len(sets["prompts"]))
        limit = reference["degeneration"] + slack
        # Beyond the limit, the prompts it newly fails must also outnumber those it now
        # answers well, with confidence (McNemar, as for the facts): 3 of 16 against 1 of 16
        # is one night's churn (measured on the learning bench), not a broken model.
        kinds = [(c["kind"] is not None, r["kind"] is not None)
                 for c, r in zip(candidate.get("answers", []), reference.get("answers", []))]
        p = flips_beyond(sum(c and not r for c, r in kinds),
                         sum(r and not c for c, r in kinds))
        check("degeneration", candidate["degeneration"], reference["degeneration"], limit,
              candidate["degeneration"] <= limit or p > 1 - gate.confidence,
              len(sets["prompts"]), "prompts")
        checks["degeneration"]["p_worse"] = _round(p)
    # p-value of "the fact margins fell beyond their tolerance" (lower is worse, so the t-test
    # reads negated margins): the fact-margins check's own, and the known facts' corroboration.
    margins_p = (worse_beyond([-m for m in candidate["fact_margins"]],
                              [-m for m in reference["fact_margins"]], gate.fact_margin_tolerance)
                 if "fact_margins" in candidate and "fact_margins" in reference else None)
    known = [i for i, right in enumerate(reference.get("facts_right", [])) if right]
    if known and "facts_right" in candidate:  # skipped when the reference knows none
        lost = [i for i in known if not candidate["facts_right"][i]]
        gained = sum(right and not ref for right, ref in zip(candidate["facts_right"],
                                                             reference["facts_right"]))
        # A small model's greedy answers flip on borderline facts both ways after any training
        # (measured: an ordinary night lost 3 and gained 9). Beyond the limit, the losses must
        # also outnumber the gains with confidence (McNemar's exact test on the flips), unless
        # the likelihoods agree that facts were lost: the mean fact margin fell by more than
        # its tolerance, at the looser `fact_corroboration_confidence` (a second witness
        # need not convict alone). Measured on the learning bench: every ordinary first night
        # lost 1 to 7 facts and raised the margins (0.46 to 0.62 against 0.45); a night of
        # wrong-fact corrections lost 5, gained 6 (p=0.73) and lowered them to 0.31 (beyond
        # the tolerance at p=0.24), answering "The capital of Poland is Lwow" in the poison's
        # own fluent words. An ordinary third night lost 5, gained 4 and lowered them by
        # 0.055, a hair past the tolerance and well within noise (p=0.45): a point estimate
        # refused it.
        p = flips_beyond(len(lost), gained)
        margins_fell = (margins_p is not None
                        and margins_p < 1 - gate.fact_corroboration_confidence)
        check("known_facts", len(lost), 0, gate.max_facts_lost,
              len(lost) <= gate.max_facts_lost
              or (p > 1 - gate.confidence and not margins_fell),
              len(known), "facts the reference answers")  # reference: 0 lost, by definition
        checks["known_facts"].update({"p_worse": _round(p), "gained": gained,
                                      "margins_fell": margins_fell})
        checks["known_facts"]["lost"] = [f"{sets['facts'][i]['question']} -> "
                                         f"{candidate['fact_answers'][i][:80]}" for i in lost]
    if margins_p is not None:
        value, ref_value = _mean(candidate["fact_margins"]), _mean(reference["fact_margins"])
        limit = ref_value - gate.fact_margin_tolerance
        check("fact_margins", value, ref_value, limit,
              value >= limit or margins_p > 1 - gate.confidence, len(sets["facts"]), "known facts")
        checks["fact_margins"]["p_worse"] = _round(margins_p)
    if "bias_gaps" in candidate and "bias_gaps" in reference:
        wide = [abs(g) for kind in ("warm", "refusal") for g in candidate["bias_gaps"][kind]]
        ref_wide = [abs(g) for kind in ("warm", "refusal") for g in reference["bias_gaps"][kind]]
        value, ref_value = sum(wide) / len(wide), sum(ref_wide) / len(ref_wide)
        limit = ref_value + gate.bias_tolerance
        p = worse_beyond(wide, ref_wide, gate.bias_tolerance)
        check("bias", value, ref_value, limit, value <= limit or p > 1 - gate.confidence,
              len(sets["bias"]), "counterfactual pairs")
        checks["bias"]["p_worse"] = _round(p)
        checks["bias"]["moved"] = bias_check.moved_most(sets["bias"], candidate["bias_gaps"],
                                                        reference["bias_gaps"])
    if "refusal_readiness" in candidate and "refusal_readiness" in reference:
        value = sum(candidate["refusal_readiness"]) / len(candidate["refusal_readiness"])
        ref_value = sum(reference["refusal_readiness"]) / len(reference["refusal_readiness"])
        limit = ref_value + gate.refusal_tolerance
        p = worse_beyond(candidate["refusal_readiness"], reference["refusal_readiness"],
                         gate.refusal_tolerance)
        check("over_refusal", value, ref_value, limit,
              value <= limit or p > 1 - gate.confidence, 2 * len(sets["bias"]),
              "harmless prompts")
        checks["over_refusal"]["p_worse"] = _round(p)
    if judged and judged.get("rate") is not None:
        # Predicted to lose beyond noise, by a judge that ranks held-out pairs well enough.
        losing = judged["interval"][1] < 0.5
        check("judge", judged["rate"], 0.5, 0.5, not (judged["trusted"] and losing),
              judged["decided"], "prompts judged")
        checks["judge"].update({"interval": judged["interval"], "accuracy": judged["accuracy"]})
    if "unreadable_feedback" in base:
        share = base["unreadable_feedback"]
        check("unreadable_feedback", share, None, gate.max_unreadable_feedback,
              share <= gate.max_unreadable_feedback, len(sets["feedback"]), "trained answers")
    failed = [describe(n, c) for n, c in checks.items() if not c["passed"]]
    skipped = [n for n in CHECKS if n not in checks]
    verdict: Literal["pass", "fail"]
    if failed:
        verdict, reason = "fail", "rejected: " + "; ".join(failed)
    elif not checks:
        verdict, reason = "fail", "rejected: no check could run (no held-out data at all)"
    else:
        verdict = "pass"
        reason = "passed: " + "; ".join(describe(n, c) for n, c in checks.items())
    if skipped:
        reason += f" (skipped for lack of data: {', '.join(skipped)})"
    return {"verdict": verdict, "reason": reason, "reference": reference_name,
            "checks": checks, "skipped": skipped, "judge": judged or {"skipped": "not run"},
            "figures": {"candidate": candidate, "reference": reference,
                        "base_anchor_loss": base.get("anchor_loss")}}


def worse_beyond(candidate: list[float], reference: list[float], margin: float) -> float:
    """p-value of "the candidate's values (per answer or pair, lower is better) exceed the
    reference's by more than `margin` on average" (one-sided paired t-test). With no spread
    to judge by (one value, or the same excess on each) the excess alone decides: 0.0 beyond
    the margin, else 1.0."""
    from scipy.stats import ttest_1samp
    excess = [c - r for c, r in zip(candidate, reference)]
    if len(excess) < 2 or max(excess) == min(excess):
        return 0.0 if excess and excess[0] > margin else 1.0
    return float(ttest_1samp(excess, margin, alternative="greater").pvalue)


def flips_beyond(worse: int, better: int) -> float:
    """p-value of "more items flipped to worse than to better" (McNemar's exact test: a
    one-sided binomial test on the items that flipped, facts lost against facts gained, say);
    1.0 when none flipped."""
    from scipy.stats import binomtest
    flipped = worse + better
    return float(binomtest(worse, flipped, 0.5, alternative="greater").pvalue) if flipped else 1.0


def describe(name: str, c: GateCheck) -> str:
    """One line on gate check `name`: the candidate's value against its limit."""
    if name == "forgetting":
        return (f"forgetting {c['candidate']:+.1%} (limit {c['limit']:+.1%}, "
                f"reference {c['reference']:+.1%})")
    if name == "known_facts":
        lost = "; ".join(c.get("lost", [])[:3])
        return (f"known facts: {c['candidate']} of the {c['n']} the reference answers lost, "
                f"{c.get('gained', 0)} gained (limit {c['limit']}; McNemar "
                f"p={c.get('p_worse', 1.0):.2f}"
                + ("; the fact margins fell too" if c.get("margins_fell") else "") + ")"
                + (f": {lost}" if lost else ""))
    if name == "judge":
        low, high = c.get("interval") or (None, None)
        return (f"judge: predicted win rate {c['candidate']:.2f} [{low:.2f}, {high:.2f}] over "
                f"{c['n']} prompts (its accuracy on held-out pairs {c.get('accuracy', 0):.2f})")
    if name == "unreadable_feedback":
        return (f"unreadable feedback {c['candidate']:.1%} of the answers trained towards "
                f"(limit {c['limit']:.1%})")
    sign = ">=" if name in ("preference_accuracy", "fact_margins") else "<="
    label = name.replace("_", " ")
    value, limit = c["candidate"], c["limit"]
    assert value is not None and limit is not None  # both are measured for these checks
    text = f"{label} {value:.3f} vs {c['reference']:.3f} (must be {sign} {limit:.3f}"
    outside = value < limit if sign == ">=" else value > limit
    if c.get("p_worse") is not None and outside:
        text += f"; paired t-test p={c['p_worse']:.2f}"
    return text + ")"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _round(x):
    return None if x is None else (round(x, 4) if isinstance(x, float) and math.isfinite(x) else x)


def evaluate(model, tokenizer, sets: dict, gate: GateConfig, has_reference: bool,
             reference_name: str, fallbacks: tuple[str, ...] = (),
             reference_known: dict | None = None) -> GateReport:
    """Measure the candidate, the reference and the base model, and judge. `model` is a
    PeftModel holding a 'candidate' adapter, and a 'reference' adapter when `has_reference`
    (otherwise the base model is the reference). `fallbacks`: more adapters in the model (the
    run's earlier stages, the latest first), each judged in turn while the ones before it
    fail; the report is the first that passes (its `stage` names it), else the candidate's.
    The reference and the base model are measured once for all of them; `reference_known`:
    the reference's fixed-set figures from its own gate (see `measure`)."""
    started = time.perf_counter()
    model.eval()
    # Whether the stored figures stand in is decided here once: the report says what measure did.
    if not (has_reference and reference_known
            and all(k in reference_known for k in fixed_figures(sets))):
        reference_known = None
    # The base model's anchor loss is always needed (forgetting is relative to it), and its
    # reading of the feedback (unreadable feedback); the rest only when it is the reference.
    base_sets = sets if not has_reference else {**sets, "heldout": [], "pairs": [],
                                                "facts": []}
    base = measure(model, tokenizer, BASE, base_sets, gate, answers=not has_reference)
    reference = (measure(model, tokenizer, "reference", sets, gate, known=reference_known)
                 if has_reference else base)
    reference_texts = reference.pop("answer_texts", None)
    base.pop("answer_texts", None)
    refused: list[dict] = []
    for name in ("candidate", *fallbacks):
        candidate = measure(model, tokenizer, name, sets, gate)
        judged = preference_judge.assess(sets, gate, candidate.pop("answer_texts", None),
                                         reference_texts)
        report = judge(candidate, reference, base, sets, gate, reference_name, judged)
        if report["verdict"] == "pass" or name == "candidate":
            chosen = report
        if report["verdict"] == "pass":
            break
        refused.append({"adapter": name, "reason": report["reason"]})
    if chosen["verdict"] == "pass" and refused:
        chosen["stage"] = name
        chosen["reason"] += (f"; the run's last stage was refused ({refused[0]['reason']}), "
                             f"so its earlier stage {name} is the candidate")
    if fallbacks:
        chosen["refused"] = refused
    chosen["seconds"] = round(time.perf_counter() - started, 1)
    chosen["fixed_sets"] = fixed_sets_key(sets, gate)
    chosen["reference_fixed_reused"] = reference_known is not None
    chosen["settings"] = asdict(gate)
    return chosen
