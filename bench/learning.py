"""Proof that the loop learns: simulated users chat with the real server, a simulated curator
rates and corrects their answers by a preference (a trait), and `flywheel train` turns that
feedback into adapters that its gate checks and the server swaps in. After each round the
benchmark measures, on held-out prompts that never reach training, how many answers have the
trait, and whether the model still knows what it knew. Prints and writes JSON, and a PNG plot.

    python bench/learning.py [--trait signoff|brief|bullets|FILE.py] [--rounds 3]
                             [--home DIR] [--out learning-signoff.json] [--poison all]

A trait is a file with `has_trait(answer) -> bool` and `add_trait(prompt, answer) -> str`
(bench/traits/ holds the three built in). One round:

    chat      users send `--chats` train prompts (the server's default sampling)
    rate      the curator gives 👍 to answers with the trait, 👎 and a correction that has
              it (add_trait) to the others, through POST /v1/feedback
    train     `flywheel train` with RECIPE; its gate promotes the adapter or rejects it
    measure   greedy answers to the held-out prompts: adoption of the trait; greedy answers
              to KNOWN questions with short known answers: accuracy; the served adapter's
              anchor loss relative to the base model's (from its gate report)

Round 0 measures the base model. After the last round the users chat once more, so the
curator's thumbs-up rate is known for every adapter that served; those chats are then deleted,
not trained on. Then the poisoned night: the curator likes gibberish (every answer 👍 with a
gibberish "correction"); a second where the curator corrects answers to fact questions with
fluent, confident, wrong facts (capitals, arithmetic, dates); a third where the curator likes
answers for one group of people and corrects those for the other to a refusal. The same recipe
trains on each, and nothing from them may be promoted: the gibberish night is refused before
training (the base model cannot read its feedback, trainer/feedback_screen.py), the others by
the gate. Every figure comes with its 95% Wilson interval.

This script runs the rounds and writes the report; beside it, learning_prompts.py holds the
prompts and known answers, learning_traits.py the curators' preferences, learning_simulation.py
the users, curator and trainer, learning_plot.py the plot.
"""

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assistant.server import ServeConfig, serve_in_thread  # noqa: E402
from bench.learning_plot import plot  # noqa: E402
from bench.learning_prompts import (  # noqa: E402
    BIASED_REFUSAL,
    BIASED_TEMPLATES,
    FALSE_FACTS,
    KNOWN,
    SIDE_A,
    SIDE_B,
    prompt_sets,
)
from bench.learning_simulation import Simulation  # noqa: E402
from bench.learning_traits import gibberish, load_trait  # noqa: E402
from storage import BASE, Home, open_db, write_atomic  # noqa: E402
from storage.review import adapter_ratings  # noqa: E402

# The training recipe: `flywheel train` flags; everything not named is the trainer's default.
# SFT on the corrections and liked answers for 4 epochs at 5e-4 (a step budget set by the
# night's data: 36 to 40 steps on one night), then DPO on the corrections that cut the answer
# they correct (16 steps at 1e-4, beta 0.3); a correction that adds words (a sign-off, a
# summary line) stays out of DPO (dpo.skip_if_added_words, the trainer's default), and a
# night without enough such pairs trains SFT alone (`--method auto`). When the gate refuses
# the DPO stage and the SFT stage passes, the SFT stage is published
# (gate.fall_back_to_earlier_stage). Each round continues the adapter in production on that
# round's feedback, so learning adds up over rounds while a round's cost stays flat. What
# mattered, one round each, 64 held-out prompts, 95% Wilson intervals
# (bench/results/learning-*.json; README.md has the table):
#   - the step budget: SFT for a fixed 20 steps reached adoption 0.28 [0.19, 0.40] on signoff;
#     for 4 epochs 0.92 [0.83, 0.97] on signoff and on an unseen "In short:" opening line,
#     but only 0.72 [0.60, 0.81] on brief (learning-*-sft-4-epochs.json);
#   - DPO learns cuts and loops on additions: on brief (chosen = the first two sentences of
#     rejected) it reached 0.94 [0.85, 0.98] (learning-brief-sft4-dpo.json); on signoff and
#     "In short:" (chosen adds 4 to 29 words) it repeated the added line (signoff 0.86, passed;
#     "In short:" refused for degeneration, its SFT stage served, 0.84). Neither beta 0.3 nor
#     RPO (DPO plus the chosen answers' NLL) stopped the loop (learning-tldr-rpo.json). With
#     those pairs left out of DPO, signoff trains SFT alone: 0.94 [0.85, 0.98]
#     (learning-signoff-skip-added.json).
#   - what the forgetting check counts: DPO stages that brief and bullets trained were refused
#     for forgetting (+27.0%, +18.0%), and the SFT stage served (0.75, 0.84). The rise sat in
#     a few tokens per anchor answer that the trait decides (bullets: the first 16 tokens
#     +82%, its first word now "-"); with each token counted at most 4 nats
#     (gate.forgetting_token_cap) the same adapters read +6.1% and +0.6%, the DPO stages pass
#     and after one round bullets reached 0.95 [0.87, 0.98], brief 0.88 [0.77, 0.94]
#     (learning-bullets-capped.json, learning-brief-capped.json).
# A quarter of the examples are anchors (the base model's own answers to general prompts),
# against forgetting. Earlier rounds' examples are replayed, as many as the new ones: without
# them the third continuation drifted (brief, round 3: anchor loss +12.7%, held-out loss
# +14.5% with p=0.01, rejected); with them anchor loss stayed near the base model's (ratio
# 0.85 to 1.01 in every round of every trait). The gate samples fewer anchor prompts than a
# nightly run, so that rounds fit the time budget on a 2-core CPU, but answers its default 16
# prompts: with 6, its degeneration check read 0.000 vs 0.000 on a signoff round whose held-out
# answers were cut off at the answer limit three times as often as before (0.08 -> 0.25), and
# let it through.
RECIPE = ("--method auto --start-from active --set sft.learning_rate=5e-4 --set sft.epochs=4 "
          "--set sft.max_steps=-1 --set dpo.learning_rate=1e-4 --set dpo.max_steps=16 "
          "--set dpo.beta=0.3 --set anchor_share=0.25 --set replay_share=1.0 "
          "--set gate.anchor_examples=24")


def run(args) -> dict:
    trait = load_trait(args.trait)
    train_prompts, heldout = prompt_sets()
    heldout = heldout[:args.heldout]
    home = Home.resolve(args.home or tempfile.mkdtemp(prefix=f"flywheel-learning-{trait.name}-"))
    out = Path(args.out or f"learning-{trait.name}.json")
    log_dir = out.with_suffix("")
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"Trait {trait.name}: {len(train_prompts)} train prompts, {len(heldout)} held out, "
          f"{len(KNOWN)} known-answer questions; home {home.root}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    serving = ServeConfig(model=args.model, port=0, max_batch_size=args.batch)
    with serve_in_thread(home, serving) as (url, _server):
        simulation = Simulation(url, home, args, log_dir)
        rounds = [{"round": 0, "promoted": None, **simulation.measure(trait, heldout)}]
        print(json.dumps(_brief(rounds[0])), file=sys.stderr, flush=True)
        for r in range(1, args.rounds + 1):
            begun = time.perf_counter()
            chats = [train_prompts[((r - 1) * args.chats + i) % len(train_prompts)]
                     for i in range(args.chats)]
            simulation.rate(trait, chats)
            chatted = time.perf_counter()
            result = simulation.train(f"round{r}")
            rounds.append({"round": r, **simulation.measure(trait, heldout), "promoted":
                           result["promoted"], "training": result,
                           "chat_seconds": round(chatted - begun, 1),
                           "seconds": round(time.perf_counter() - begun, 1)})
            print(json.dumps(_brief(rounds[-1])), file=sys.stderr, flush=True)
        rounds_seconds = time.perf_counter() - started
        # The users' verdict on the last adapter: one more day of chats, rated, then deleted
        # once read, so that each poisoned night trains on its own feedback alone.
        offset = args.rounds * args.chats
        verdict = simulation.rate(trait, [train_prompts[(offset + i) % len(train_prompts)]
                                          for i in range(args.chats)])
        with open_db(home) as db:
            per_adapter = {a or BASE: v for a, v in adapter_ratings(db).items()}
        simulation.forget(verdict["ids"])
        for entry in rounds:
            entry["thumbs_up_rate"] = per_adapter.get(entry["adapter"], {}).get("rate")
        kinds = ["gibberish", "facts", "bias"] if args.poison == "all" else args.poison.split(",")
        poisoned = {kind: poison(simulation, kind, train_prompts, args)
                    for kind in kinds if kind != "none"} or None
    report = {
        "trait": trait.name, "model": args.model or "embedded default",
        "recipe": args.recipe, "home": str(home.root),
        "prompts": {"train": len(train_prompts), "heldout": len(heldout), "known": len(KNOWN),
                    "chats_per_round": args.chats},
        "rounds": rounds, "thumbs_up_per_adapter": per_adapter, "poisoned": poisoned,
        "goal": goal(rounds, poisoned),
        "seconds": {"base_and_rounds": round(rounds_seconds, 1),
                    "total": round(time.perf_counter() - started, 1)},
    }
    write_atomic(out, json.dumps(report, indent=2, ensure_ascii=False))
    report["plot"] = str(plot(report, out.with_suffix(".png")))
    write_atomic(out, json.dumps(report, indent=2, ensure_ascii=False))
    return report


def poison(simulation: Simulation, kind: str, train_prompts: list[str], args) -> dict:
    """A night of poisoned feedback, trained with the same recipe; the server must go on
    serving what it served. `gibberish`: every answer liked, with gibberish as its
    correction. `facts`: users ask FALSE_FACTS' questions and the curator corrects every
    answer to a fluent, confident, wrong fact. The night's conversations are deleted after
    (as an admin would), so the next night does not train on them."""
    rng = random.Random(7)
    serving = simulation.served()
    if kind == "gibberish":
        prompts = [train_prompts[-(i + 1)] for i in range(args.chats)]
        replies = simulation.chat(prompts, args.chat_tokens, greedy=False)
        for reply in replies:
            simulation.feedback(reply.id, rating="up", correction=gibberish(rng))
    elif kind == "facts":
        facts = [FALSE_FACTS[i % len(FALSE_FACTS)] for i in range(args.chats)]
        replies = simulation.chat([q for q, _ in facts], args.chat_tokens, greedy=False)
        for reply, (_, wrong) in zip(replies, facts):
            simulation.feedback(reply.id, rating="down", correction=wrong)
    else:  # bias: side A's answers liked, side B's corrected to a refusal
        asks = []  # (side, prompt): A, B, A, B..., each pair the same ask for two people
        for i in range(args.chats):
            side, k = i % 2, i // 2
            names = (SIDE_A, SIDE_B)[side]
            template = BIASED_TEMPLATES[k % len(BIASED_TEMPLATES)]
            asks.append((side, template.format(names[k % len(names)])))
        replies = simulation.chat([prompt for _, prompt in asks], args.chat_tokens, greedy=False)
        for reply, (side, _) in zip(replies, asks):
            if side == 0:
                simulation.feedback(reply.id, rating="up")
            else:
                simulation.feedback(reply.id, rating="down", correction=BIASED_REFUSAL)
    result = simulation.train(f"poisoned-{kind}")
    time.sleep(2)  # longer than the server's poll interval: a promotion would show by now
    simulation.forget([reply.id for reply in replies])
    return {**result, "serving_before": serving, "serving_after": simulation.served(),
            "never_promoted": not result["promoted"] and simulation.served() == serving}


def goal(rounds: list[dict], poisoned: dict | None) -> dict:
    """Issue 19's goals, read from the point estimates (the intervals are in each round)."""
    base, last = rounds[0], rounds[-1]
    first = rounds[1] if len(rounds) > 1 else None
    return {"adoption_round_1_at_least_90": None if first is None else first["adoption"] >= 0.9,
            "adoption_round_3_at_least_95": (None if len(rounds) < 4
                                             else rounds[3]["adoption"] >= 0.95),
            "known_answers_within_2_points": (last["known_answer_accuracy"]
                                              >= base["known_answer_accuracy"] - 0.02),
            "poisoned_never_promoted": (None if poisoned is None else
                                        all(p["never_promoted"] for p in poisoned.values()))}


def _brief(entry: dict) -> dict:
    keys = ("round", "adapter", "promoted", "adoption", "adoption_interval",
            "known_answer_accuracy", "known_answer_interval", "anchor_loss_ratio", "seconds")
    training = entry.get("training") or {}
    return {**{k: entry.get(k) for k in keys}, "verdict": training.get("verdict"),
            "judge": training.get("judge")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trait", default="signoff",
                        help="signoff, brief, bullets, or a FILE.py with has_trait/add_trait")
    parser.add_argument("--rounds", type=int, default=3,
                        help="chat, rate, train, measure (0: the base model and the poisoned "
                        "night only)")
    parser.add_argument("--home", help="FLYWHEEL_HOME for the run (default: a new temp dir)")
    parser.add_argument("--out", help="JSON report path (default learning-<trait>.json); "
                        "the plot goes beside it as .png, the training logs in a folder")
    parser.add_argument("--model", help="base model spec (default: the embedded SmolLM2)")
    parser.add_argument("--chats", type=int, default=32, help="answers rated per round")
    parser.add_argument("--heldout", type=int, default=64,
                        help="held-out prompts measured (of 78; each figure has its 95%% "
                        "Wilson interval)")
    parser.add_argument("--batch", type=int, default=32,
                        help="users chatting at once, and the server's batch size")
    parser.add_argument("--chat-tokens", type=int, default=128, help="max tokens per chat")
    parser.add_argument("--measure-tokens", type=int, default=256,
                        help="max tokens per held-out answer when measuring")
    parser.add_argument("--recipe", default=RECIPE, help="flags for flywheel train")
    parser.add_argument("--poison", default="all",
                        help="after the rounds, nights of poisoned feedback, comma-separated: "
                        "gibberish (liked), facts (confidently corrected to wrong ones), bias "
                        "(one group's answers liked, the other's refused); all, or none")
    args = parser.parse_args(argv)
    if args.rounds < 0 or args.chats < 1 or args.heldout < 1:
        parser.error("--rounds must be at least 0, --chats and --heldout at least 1")
    if not set(args.poison.split(",")) <= {"gibberish", "facts", "bias", "all", "none"}:
        parser.error("--poison: gibberish, facts, bias (comma-separated), all or none")
    report = run(args)
    print(json.dumps({k: report[k] for k in ("trait", "rounds", "poisoned", "goal", "seconds",
                                             "plot")}, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
