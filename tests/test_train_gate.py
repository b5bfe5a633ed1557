"""The evaluation gate's verdict after `flywheel train` on the tiny model and the promotion
policy: thresholds, unreadable feedback (refused before training), the held-out loss and
preferences judged beyond noise, degenerate answers named, manual promotion and an A/B
split."""

import json
import random
from pathlib import Path

import pytest

from storage import ab, adapters, open_db
from tests.conftest import add_answers, make_adapter, train_config
from trainer.gate_sets import gate_sets
from trainer.mixing import gather
from trainer.train import run_cycle


def test_the_gate_rejects_by_its_thresholds_and_the_active_adapter_stays(home, tiny_model_dir):
    add_answers(home, 4)
    first = run_cycle(home, train_config(tiny_model_dir))
    # A forgetting limit below zero: no adapter that learnt anything can pass it.
    second = run_cycle(home, train_config(tiny_model_dir, "gate.max_forgetting=-0.5"))
    assert second["status"] == "rejected"
    gate = second["metrics"]["gate"]
    assert gate["verdict"] == "fail" and gate["reference"] == first["id"]
    assert gate["reason"].startswith("rejected: forgetting")
    assert not gate["checks"]["forgetting"]["passed"]
    with open_db(home) as db:
        assert adapters.active(db)["id"] == first["id"]
        assert second["id"] not in [a["id"] for a in adapters.servable(db, "tiny-model0")]
        with pytest.raises(ValueError, match="rejected by the evaluation gate"):
            adapters.promote(db, second["id"])
    # The reference's figures on the fixed sets (known facts, counterfactual pairs, held-out
    # anchors) come from the gate that passed it, measured under the same sets and settings:
    # not measured again.
    passed = first["metrics"]["gate"]["figures"]["candidate"]
    assert gate["reference_fixed_reused"] and gate["fixed_sets"] == first["metrics"]["gate"][
        "fixed_sets"]
    assert gate["figures"]["reference"]["fact_margins"] == passed["fact_margins"]
    assert gate["figures"]["reference"]["anchor_loss"] == passed["anchor_loss"]
    # Settings that shape the answers differ: measured again, and the same figures come out.
    third = run_cycle(home, train_config(tiny_model_dir, "gate.max_forgetting=-0.5",
                                         "gate.fact_tokens=6"))["metrics"]["gate"]
    assert not third["reference_fixed_reused"] and third["fixed_sets"] != gate["fixed_sets"]
    assert third["figures"]["reference"]["fact_margins"] == pytest.approx(
        passed["fact_margins"], abs=1e-4)
    assert third["figures"]["reference"]["anchor_loss"] == pytest.approx(
        passed["anchor_loss"], rel=1e-4)
    for kind in ("warm", "refusal"):
        assert third["figures"]["reference"]["bias_gaps"][kind] == pytest.approx(
            passed["bias_gaps"][kind], abs=1e-4)


def test_manual_promotion_leaves_a_candidate_and_can_start_an_ab_split(home, tiny_model_dir):
    add_answers(home, 4)
    row = run_cycle(home, train_config(tiny_model_dir, "promotion='manual'", "ab_share=0.3"))
    assert row["status"] == "candidate"
    with open_db(home) as db:
        assert adapters.active(db) is None
        test = ab.current(db)
    assert test["candidate_id"] == row["id"] and test["share"] == 0.3


def test_feedback_the_base_model_cannot_read_is_refused_before_training(home, tiny_model_dir):
    from assistant.ui_training import run_progress
    from storage import runs
    from trainer.train import FeedbackRefused
    first = add_answers(home, 8)  # the tiny model's random weights: every text unreadable
    with pytest.raises(FeedbackRefused, match=r"100\.0% of the 8 answers .* unreadable to the "
                       r"base model \(limit gate.max_unreadable_feedback 5\.0%\)"):
        run_cycle(home, train_config(tiny_model_dir, "gate.max_unreadable_feedback=0.05"))
    with open_db(home) as db:
        assert adapters.list_adapters(db) == []
        refused = runs.latest(db)
    # A decision, as a gate's refusal is: the run ended with its reason, no adapter, and the
    # nightly count of new feedback starts again from it (the same data is not retried).
    assert refused["status"] == "succeeded" and refused["adapter_id"] is None
    assert refused["metrics"]["refused_before_training"].startswith("100.0% of the 8 answers")
    assert not list((home.runs_dir / refused["id"]).glob("*-sft"))  # no stage ever started
    shown = run_progress(home, refused)
    assert "- · training (skipped)" in shown and "- · evaluating (skipped)" in shown
    assert "Done: refused before training: 100.0% of the 8 answers" in shown
    with open_db(home) as db:
        assert runs.last_started(db)["id"] == refused["id"]
    # Within the limit, the same feedback trains, and the gate reports the screen's figure.
    row = run_cycle(home, train_config(tiny_model_dir, "gate.max_unreadable_feedback=1"))
    check = row["metrics"]["gate"]["checks"]["unreadable_feedback"]
    assert check["passed"] and check["candidate"] == 1.0 and check["n"] == len(first)


def test_the_held_out_loss_leaves_out_the_answers_the_reference_wrote(home, tiny_model_dir):
    # A model gives its own samples a low loss: scored on them, the served adapter would
    # beat every candidate once most feedback is a 👍 on its answers.
    from assistant import models
    add_answers(home, 4)
    served = run_cycle(home, train_config(tiny_model_dir))["id"]
    add_answers(home, 16, start=10, correct_every=2, adapter_id=served)
    base = models.resolve(str(tiny_model_dir), home)
    config = train_config(tiny_model_dir, "validation_share=0.5", "min_examples=2")
    sets, _ = gather(home, base, config)
    validation = sets["sft"]["validation"]
    liked = [e for e in validation if e["source"] == "liked"]
    by_served = [e for e in liked if int(e["prompt"][-1]["content"].split()[1][:-1]) >= 10]
    assert by_served and len(liked) < len(validation)

    def heldout(reference):
        return [r["completion"][0]["content"]
                for r in gate_sets(home, base, sets, config, reference=reference)["heldout"]]
    everything = heldout("another-adapter")
    preferred = ({json.dumps([e["prompt"], e["completion"]]) for e in validation}
                 | {json.dumps([e["prompt"], e["chosen"]]) for e in sets["dpo"]["validation"]})
    assert len(everything) == len(preferred)  # each once: a correction is also a DPO chosen
    against_served = heldout(served)
    assert len(against_served) == len(everything) - len(by_served)
    assert not {e["completion"][0]["content"] for e in by_served} & set(against_served)


def test_held_out_loss_and_preferences_reject_a_candidate_only_when_worse_beyond_noise():
    # Figures of the kind the gate measures: per-answer losses, per-pair margins.
    from trainer.config import GateConfig
    from trainer.gate import judge
    from trainer.scoring import mean_loss

    def held_out(losses):
        return {"heldout_loss": mean_loss([(-x, 1) for x in losses]), "heldout_losses": losses}

    def verdict(candidate, reference):
        sets = {"heldout": candidate, "pairs": [], "anchor": [], "prompts": []}
        report = judge(held_out(candidate), held_out(reference), {}, sets, GateConfig(), "ref")
        return report["checks"]["heldout_loss"], report["reason"]

    def preferences(candidate, reference):
        def figures(margins):
            return {"preference_accuracy": sum(m > 0 for m in margins) / len(margins),
                    "preference_margins": margins}
        sets = {"heldout": [], "pairs": candidate, "anchor": [], "prompts": []}
        return judge(figures(candidate), figures(reference), {}, sets, GateConfig(),
                     "ref")["checks"]["preference_accuracy"]

    # Measured (brief, round 3): a chosen answer that is the rejected one shortened flips on
    # a 0.01 margin; 0.75 against 1.00, but no pair's margin moved beyond noise.
    check = preferences([-0.01, 0.14, 0.43, 0.29], [0.01, 0.12, 0.31, 0.36])
    assert check["candidate"] < check["limit"] and check["passed"]
    # Every margin smaller, most now the wrong way: rejected.
    check = preferences([-0.1, -0.05, 0.3, -0.2, 0.25, -0.15], [0.4, 0.5, 0.6, 0.45, 0.55, 0.35])
    assert not check["passed"] and check["p_worse"] < 0.05

    reference = [0.57, 0.71, 0.65, 0.49, 0.50, 0.41, 0.32]
    # 8% worse on average, but up on some answers and down on others: within noise.
    noisy = [0.59, 0.72, 0.73, 0.56, 0.51, 0.50, 0.28]
    check, reason = verdict(noisy, reference)
    assert check["candidate"] > check["limit"] and check["passed"] and check["p_worse"] > 0.05
    # The same mean excess on every answer: it is worse, and rejected, with the p-value said.
    steady = [x * 1.08 for x in reference]
    check, reason = verdict(steady, reference)
    assert not check["passed"] and check["p_worse"] < 0.05
    assert "heldout loss" in reason and "paired t-test p=0.00" in reason
    # Within the tolerance: passes whatever the spread.
    assert verdict([x * 1.01 for x in reference], reference)[0]["passed"]
    # One answer says nothing about noise: the tolerance alone decides.
    assert not verdict([0.70], [0.57])[0]["passed"]


def test_a_candidate_may_lose_at_most_one_fact_the_reference_knows_beyond_noise():
    from trainer.config import GateConfig
    from trainer.gate import judge
    from trainer.known_facts import load
    facts = load(12)
    sets = {"heldout": [], "pairs": [], "anchor": [], "prompts": [], "facts": facts}
    knows = [True] * 8 + [False] * 4  # the reference answers the first eight

    def verdict(candidate_right):
        def figures(right):
            return {"facts_right": list(right), "fact_answers": ["I am sure it is Lyon."] * 12}
        return judge(figures(candidate_right), figures(knows), {}, sets, GateConfig(), "ref")

    # One lost (the last four it gets wrong too do not count): within the limit.
    assert verdict([False] + [True] * 7 + [False] * 4)["verdict"] == "pass"
    # Five lost, none gained: refused, naming the facts and what it said.
    report = verdict([False] * 5 + [True] * 3 + [False] * 4)
    check = report["checks"]["known_facts"]
    assert report["verdict"] == "fail" and not check["passed"] and check["candidate"] == 5
    assert check["p_worse"] < 0.05 and check["gained"] == 0
    assert "known facts: 5 of the 8 the reference answers lost, 0 gained (limit 1" in \
        report["reason"]
    assert facts[0]["question"] in report["reason"]
    # Two lost and four gained: the churn of any training run on a small model, not forgetting.
    churn = verdict([False] * 2 + [True] * 6 + [True] * 4)
    assert churn["verdict"] == "pass" and churn["checks"]["known_facts"]["p_worse"] > 0.05
    # The same churn while the likelihoods say the facts were lost (the mean margin of true
    # over wrong answers fell beyond its tolerance): the losses are not noise, refused.
    fell = judge({"facts_right": [False] * 2 + [True] * 10, "fact_answers": [""] * 12,
                  "fact_margins": [0.3] * 12},
                 {"facts_right": knows, "fact_answers": [""] * 12, "fact_margins": [0.45] * 12},
                 {}, sets, GateConfig(), "ref")
    check = fell["checks"]["known_facts"]
    assert fell["verdict"] == "fail" and not check["passed"] and check["margins_fell"]
    assert "2 of the 8 the reference answers lost, 4 gained" in fell["reason"]
    assert "the fact margins fell too" in fell["reason"]
    # Margins that held: the same flips pass.
    held = judge({"facts_right": [False] * 2 + [True] * 10, "fact_answers": [""] * 12,
                  "fact_margins": [0.5] * 12},
                 {"facts_right": knows, "fact_answers": [""] * 12, "fact_margins": [0.45] * 12},
                 {}, sets, GateConfig(), "ref")
    assert held["verdict"] == "pass" and not held["checks"]["known_facts"]["margins_fell"]
    # A mean fall a hair past the tolerance, within noise (the facts moved both ways, as on an
    # ordinary third night): no witness against the flips, which pass.
    ref = [0.45 + (0.3 if i % 2 else -0.3) for i in range(12)]
    noisy = judge({"facts_right": [False] * 2 + [True] * 10, "fact_answers": [""] * 12,
                   "fact_margins": [m - 0.06 + (0.25 if i % 3 else -0.5)
                                    for i, m in enumerate(ref)]},
                  {"facts_right": knows, "fact_answers": [""] * 12, "fact_margins": ref},
                  {}, sets, GateConfig(), "ref")
    assert noisy["checks"]["fact_margins"]["candidate"] < 0.45 - 0.05  # past the tolerance
    assert noisy["verdict"] == "pass" and not noisy["checks"]["known_facts"]["margins_fell"]
    # A reference that knows none of them gives the check nothing to go on: skipped.
    assert "known_facts" in judge({"facts_right": [True] * 12}, {"facts_right": [False] * 12},
                                  {}, sets, GateConfig(), "ref")["skipped"]


def test_a_candidate_that_finds_true_answers_less_likely_than_wrong_ones_is_refused():
    # The facts' margins: log-probability per token of the true short answer minus a wrong one.
    from trainer.config import GateConfig
    from trainer.gate import judge
    from trainer.known_facts import load
    facts = load(20)
    assert all(f["answer"] and f["wrong"] and f["answer"] != f["wrong"] for f in facts)
    sets = {"heldout": [], "pairs": [], "anchor": [], "prompts": [], "facts": facts}
    reference = [0.5 + 0.3 * ((i * 7) % 5 - 2) for i in range(20)]  # spread like the base's

    def verdict(candidate):
        return judge({"fact_margins": candidate}, {"fact_margins": reference}, {}, sets,
                     GateConfig(), "ref")

    # A style night: each margin moves a little either way; the mean stays put.
    churn = verdict([m + (0.2 if i % 2 else -0.2) for i, m in enumerate(reference)])
    assert churn["verdict"] == "pass" and churn["checks"]["fact_margins"]["n"] == 20
    # A night of confident wrong facts: true answers fall against wrong ones across the set.
    poisoned = verdict([m - 0.2 + (0.1 if i % 2 else -0.1) for i, m in enumerate(reference)])
    check = poisoned["checks"]["fact_margins"]
    assert poisoned["verdict"] == "fail" and check["p_worse"] < 0.05
    assert check["limit"] == round(sum(reference) / 20 - 0.05, 4)
    assert "fact margins 0.300 vs 0.500 (must be >= 0.450; paired t-test p=0.00)" in \
        poisoned["reason"]
    # Within the tolerance: passes however steady the fall.
    assert verdict([m - 0.03 for m in reference])["verdict"] == "pass"


def test_each_version_answers_the_known_facts_itself(tiny_model_dir, tmp_path):
    # Measured in the gate's order: the candidate, then the base model as the reference. The
    # base model's answers must be its own, not those of the adapter active before it.
    from peft import PeftModel

    from assistant import models
    from storage import BASE
    from trainer.config import GateConfig
    from trainer.gate import measure
    from trainer.known_facts import load
    from trainer.scoring import generate
    model, tokenizer = models.load(models.BaseModel("tiny", tiny_model_dir))
    model = PeftModel.from_pretrained(model, make_adapter(tiny_model_dir, tmp_path / "a", 1),
                                      adapter_name="candidate")
    facts = load(4)
    sets = {"heldout": [], "pairs": [], "anchor": [], "prompts": [], "facts": facts}
    gate = GateConfig(fact_tokens=8)
    candidate = measure(model, tokenizer, "candidate", sets, gate)
    base = measure(model, tokenizer, BASE, sets, gate)
    with model.disable_adapter():
        own = generate(model, tokenizer, [[{"role": "user", "content": f["question"]}]
                                          for f in facts], 8, 8, "the base model alone")
    assert base["fact_answers"] == [a["text"][:160] for a in own]
    assert candidate["fact_answers"] != base["fact_answers"]  # the adapter says other things
    # Both read the facts' margins too, each its own (the adapter moves them).
    assert len(base["fact_margins"]) == len(candidate["fact_margins"]) == 4
    assert base["fact_margins"] != candidate["fact_margins"]


def test_the_judge_learns_what_curators_prefer_and_refuses_a_candidate_predicted_to_lose():
    # Curators who want a concrete example in every answer: their corrections add one.
    from trainer.config import GateConfig
    from trainer.gate import judge
    from trainer.judge import assess
    topics = ["rain", "bread", "chess", "tides", "bees", "maps", "jazz", "glaciers", "tea",
              "bridges", "sleep", "clouds", "magnets", "volcanoes", "libraries", "coral"]
    openings = ["{} is worth understanding.", "People often ask about {}.",
                "Here is a short note on {}.", "{} has a long history.",
                "Scientists still study {}.", "Many children are curious about {}.",
                "There is more to {} than it seems.", "{} shows up in daily life.",
                "Let me explain {} briefly.", "{} can be explained simply."]
    plain = [o.format(t).capitalize() for t in topics for o in openings]
    random.Random(0).shuffle(plain)

    def with_example(text):
        return f"{text} For example, a farmer in Kenya sees it every single morning."
    pairs = [(with_example(t), t) for t in plain]
    sets = {"heldout": [], "pairs": [], "anchor": [], "prompts": [], "facts": [],
            "judge": {"train": pairs[:120], "heldout": pairs[120:]}}
    gate = GateConfig()
    answers = plain[-16:]
    better = assess(sets, gate, [with_example(a) for a in answers], answers)
    assert better["accuracy"] >= 0.9 and better["trusted"]
    assert better["rate"] >= 0.9 and better["interval"][0] > 0.5
    worse = assess(sets, gate, answers, [with_example(a) for a in answers])
    assert worse["rate"] <= 0.1 and worse["interval"][1] < 0.5
    report = judge({}, {}, {}, sets, gate, "ref", worse)
    assert report["verdict"] == "fail" and not report["checks"]["judge"]["passed"]
    assert "judge: predicted win rate 0.00" in report["reason"]
    assert judge({}, {}, {}, sets, gate, "ref", better)["verdict"] == "pass"
    # A judge that ranks held-out pairs no better than chance is reported, not acted on.
    assert judge({}, {}, {}, sets, gate, "ref", {**worse, "trusted": False})["verdict"] == "pass"
    # Too little feedback: skipped, and it says why.
    few = {**sets, "judge": {"train": pairs[:50], "heldout": pairs[120:]}}
    skipped = assess(few, gate, answers, answers)
    assert skipped == {"skipped": "50 preference pairs to learn from, 100 needed "
                                  "(judge_min_pairs)"}
    assert "judge" in judge({}, {}, {}, few, gate, "ref", skipped)["skipped"]


def test_the_bias_check_refuses_a_candidate_whose_counterfactual_gaps_widen():
    from trainer.bias_check import load
    from trainer.config import GateConfig
    from trainer.gate import judge
    pairs = load()
    sets = {"heldout": [], "pairs": [], "anchor": [], "prompts": [], "bias": pairs}
    rng = random.Random(0)
    # The reference's gaps: small, either way (nats per token).
    warm = [rng.gauss(0, 0.03) for _ in pairs]
    refusal = [rng.gauss(0, 0.03) for _ in pairs]
    reference = {"bias_gaps": {"warm": warm, "refusal": refusal}}

    def verdict(warm_shift, refusal_shift=0.0, noise=0.0):
        candidate = {"bias_gaps": {
            "warm": [g + warm_shift + rng.gauss(0, noise) for g in warm],
            "refusal": [g + refusal_shift + rng.gauss(0, noise) for g in refusal]}}
        return judge(candidate, reference, {}, sets, GateConfig(), "ref")

    assert verdict(0.0, noise=0.01)["verdict"] == "pass"
    # One side's warm answers now much less likely, on every religion and name pair alike.
    skewed = verdict(0.3)
    check = skewed["checks"]["bias"]
    assert skewed["verdict"] == "fail" and not check["passed"] and check["p_worse"] < 0.05
    assert check["moved"][0].startswith("warm gap") and len(check["moved"]) == 5
    # Noisy gaps that widen no more than the tolerance on average: passed.
    assert verdict(0.02, noise=0.05)["checks"]["bias"]["passed"]


def test_a_candidate_that_refuses_harmless_requests_more_readily_is_refused():
    # The counterfactual pairs' prompts are harmless; each side scored with its warm answer and
    # a refusal. Readiness: the warm answer's loss minus the refusal's (higher: refuses sooner).
    from trainer.bias_check import load, refusal_readiness
    from trainer.config import GateConfig
    from trainer.gate import judge
    pairs = load(6)
    sets = {"heldout": [], "pairs": [], "anchor": [], "prompts": [], "bias": pairs}
    rng = random.Random(1)
    # Four losses per pair, in bias_check.rows' order: warm A, warm B, refusal A, refusal B.
    base = [x for _ in pairs for x in (3.0 + rng.gauss(0, 0.1), 3.0 + rng.gauss(0, 0.1),
                                       2.0 + rng.gauss(0, 0.1), 2.0 + rng.gauss(0, 0.1))]
    reference = {"refusal_readiness": refusal_readiness(base)}
    assert len(reference["refusal_readiness"]) == 12  # both sides of each pair

    def verdict(refusal_shift):
        losses = [x + (refusal_shift if i % 4 >= 2 else 0) + rng.gauss(0, 0.05)
                  for i, x in enumerate(base)]
        return judge({"refusal_readiness": refusal_readiness(losses)}, reference, {}, sets,
                     GateConfig(), "ref")

    # Refusals a little likelier, or less likely: an ordinary night.
    assert verdict(-0.05)["verdict"] == verdict(0.3)["verdict"] == "pass"
    # Refusals half a nat per token likelier for everyone: refused, and the report says so.
    report = verdict(-0.5)
    check = report["checks"]["over_refusal"]
    assert report["verdict"] == "fail" and check["p_worse"] < 0.05 and check["n"] == 12
    assert report["reason"].startswith("rejected: over refusal 1.")


def test_degeneration_beyond_its_limit_is_refused_only_beyond_noise():
    from trainer.config import GateConfig
    from trainer.gate import judge
    prompts = [[{"role": "user", "content": f"Question {i}?"}] for i in range(16)]
    sets = {"heldout": [], "pairs": [], "anchor": [], "prompts": prompts}

    def figures(bad: set[int]):
        return {"degeneration": len(bad) / 16,
                "answers": [{"kind": "cut off" if i in bad else None} for i in range(16)]}

    def verdict(bad: set[int]):
        return judge(figures(bad), figures({0}), {}, sets, GateConfig(), "ref")["checks"]

    # Three of sixteen against one: over the limit (1/16 + 0.1), but two flips are churn.
    churn = verdict({0, 5, 9})["degeneration"]
    assert churn["candidate"] > churn["limit"] and churn["passed"] and churn["p_worse"] > 0.05
    # Seven newly degenerate, none mended: refused.
    broken = verdict({0, 1, 2, 3, 4, 5, 6, 7})["degeneration"]
    assert not broken["passed"] and broken["p_worse"] < 0.05


def test_the_gate_names_each_kind_of_degenerate_answer():
    from trainer.gate import degenerate
    plain = {"text": "Paris is the capital of France.", "ended": True, "base_loss": 1.2}
    assert degenerate(plain, 5.0) is None
    assert degenerate({**plain, "text": ""}, 5.0) == "empty"
    assert degenerate({**plain, "text": "zorvek plimqua draxnu", "base_loss": 7.9}, 5.0) == \
        "unreadable"
    assert degenerate({**plain, "ended": False}, 5.0) == "cut off"
    assert degenerate({**plain, "text": "the cat sat on the mat " * 6}, 5.0) == "repetitive"


def test_a_refused_last_stage_falls_back_to_the_earlier_stage_that_passes(home, tiny_model_dir):
    add_answers(home, 8, correct_every=1)  # every answer corrected: pairs for DPO
    # SFT at a tiny step barely moves the model; DPO at a huge one breaks it, past the
    # forgetting limit.
    settings = ["method='sft+dpo'", "min_pairs=4", "sft.learning_rate=1e-6",
                "dpo.learning_rate=0.5", "dpo.max_steps=3", "dpo.batch_size=2",
                "gate.max_forgetting=0.05", "dpo.skip_if_added_words=0",  # rewrites, kept
                # The tiny random model scores every token above the cap: measure it uncapped.
                "gate.forgetting_token_cap=0"]
    row = run_cycle(home, train_config(tiny_model_dir, *settings))
    gate = row["metrics"]["gate"]
    assert gate["verdict"] == "pass" and gate["stage"] == "1-sft"
    assert gate["refused"][0]["adapter"] == "candidate"
    assert gate["refused"][0]["reason"].startswith("rejected: forgetting")
    assert row["method"] == "sft" and row["status"] == "active"
    stage = home.runs_dir / row["run_id"] / "1-sft" / "final"
    served = Path(row["path"])
    assert (served / "adapter_model.safetensors").read_bytes() == \
        (stage / "adapter_model.safetensors").read_bytes()
    # Without the fallback, the same night is refused and nothing is published for serving.
    add_answers(home, 8, start=20, correct_every=1)
    refused = run_cycle(home, train_config(tiny_model_dir, *settings, "start_from='base'",
                                           "gate.fall_back_to_earlier_stage=false"))
    assert refused["status"] == "rejected" and "stage" not in refused["metrics"]["gate"]


def test_forgetting_counts_each_anchor_token_at_most_the_cap(tiny_model_dir):
    # A taught trait moves a few tokens per answer by many nats (its first word, where it
    # stops); the forgetting check caps each token so that those few cannot read as forgetting.
    from assistant import models
    from trainer.config import GateConfig
    from trainer.gate import fixed_sets_key
    from trainer.scoring import answer_logprobs
    model, tokenizer = models.load(models.BaseModel("tiny", tiny_model_dir))
    rows = [([{"role": "user", "content": f"Tell me about topic {i}."}],
             [{"role": "assistant", "content": f"Topic {i} is a fine topic, and here is why."}])
            for i in range(3)]
    plain = answer_logprobs(model, tokenizer, rows, 2, "plain")
    worst = max(-total / count for total, count in plain)  # the random model: several nats
    cap = worst / 2
    capped = answer_logprobs(model, tokenizer, rows, 2, "capped", token_cap=cap)
    assert [n for _, n in capped] == [n for _, n in plain]
    assert all(-total <= cap * count + 1e-4 for total, count in capped)
    assert sum(t for t, _ in capped) > sum(t for t, _ in plain)
    wide = answer_logprobs(model, tokenizer, rows, 2, "wide", token_cap=1e6)
    assert [t for t, _ in wide] == pytest.approx([t for t, _ in plain], rel=1e-5)
    # A stored anchor loss measured under another cap never stands in for a new one.
    sets = {"anchor": [{"prompt": p, "completion": a} for p, a in rows]}
    assert fixed_sets_key(sets, GateConfig()) != fixed_sets_key(
        sets, GateConfig(forgetting_token_cap=0.0))
