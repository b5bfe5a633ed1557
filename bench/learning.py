"""Proof that the loop learns: simulated users chat with the real server, a simulated curator
rates and corrects their answers by a preference (a trait), and `flywheel train` turns that
feedback into adapters that its gate checks and the server swaps in. After each round the
benchmark measures, on held-out prompts that never reach training, how many answers have the
trait, and whether the model still knows what it knew. Prints and writes JSON, and a PNG plot.

    python bench/learning.py [--trait signoff|brief|bullets|FILE.py] [--rounds 3]
                             [--home DIR] [--out learning-signoff.json] [--poison gibberish]

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
curator's thumbs-up rate is known for every adapter that served. Then the poisoned night: the
curator likes gibberish (every answer 👍 with a gibberish "correction"); the same recipe
trains on it, and the gate must refuse to promote what comes out.
"""

import argparse
import importlib.util
import json
import random
import re
import shlex
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import openai  # noqa: E402

from assistant.server import ServeConfig, serve_in_thread  # noqa: E402
from assistant.training_process import start_training  # noqa: E402
from storage import (  # noqa: E402
    Home,
    adapters,  # noqa: E402
    open_db,
    write_atomic,
)
from storage.review import adapter_ratings  # noqa: E402

TRAITS = Path(__file__).resolve().parent / "traits"

# The training recipe: `flywheel train` flags; everything not named is the trainer's default.
# SFT on the corrections and liked answers; each round continues the adapter in production on
# that round's feedback (so learning adds up over rounds while a round's cost stays flat).
# 20 steps at 5e-4 per round. With 16, signoff's answers were still cut off at the answer
# limit before the sign-off line (adoption 0.75 after round 3); with 20, three signoff runs
# ended at 0.83, 0.75 and 0.96 (each held-out answer is 0.04: runs differ by the sampled chats).
# A quarter of the examples are anchors (the base model's own answers to general prompts),
# against forgetting. Earlier rounds' examples are replayed, as many as the new ones: without
# them the third continuation drifted (brief, round 3: anchor loss +12.7%, held-out loss
# +14.5% with p=0.01, rejected); with them anchor loss stayed near the base model's (ratio
# 0.85 to 1.01 in every round of every trait). The gate samples fewer anchor prompts than a
# nightly run, so that three rounds fit in 30 minutes on a 2-core CPU, but answers its
# default 16 prompts: with 6, its degeneration check read 0.000 vs 0.000 on a signoff round
# whose held-out answers were cut off at the answer limit three times as often as before
# (0.08 -> 0.25), and let it through.
RECIPE = ("--method sft --start-from active --learning-rate 5e-4 --max-steps 20 "
          "--set anchor_share=0.25 --set replay_share=1.0 "
          "--set gate.anchor_examples=24")

SUBJECTS = [
    "photosynthesis", "the water cycle", "compound interest", "volcanoes", "the internet",
    "vaccines", "black holes", "recycling", "the stock market", "earthquakes",
    "electric cars", "solar power", "the immune system", "democracy", "machine learning",
    "coffee", "jazz", "the Roman Empire", "climate change", "sleep", "honey bees", "rainbows",
    "ocean tides", "batteries", "bread", "chess", "meditation", "the moon", "DNA", "gravity",
    "inflation", "bacteria", "the printing press", "glaciers", "airplanes", "bicycles",
    "rain forests", "the heart", "volunteering", "libraries", "passwords", "maps", "clouds",
    "friendship", "recessions", "wind turbines", "the Olympic Games", "dinosaurs", "tea",
    "octopuses", "the human brain", "electricity", "bridges", "deserts", "the periodic table",
    "social media", "composting", "lightning", "coral reefs", "museums",
]
SKILLS = [
    "learning a new language", "running a first marathon", "baking sourdough bread",
    "saving money", "public speaking", "growing tomatoes", "learning to code",
    "writing a cover letter", "keeping a journal", "cooking for a family", "studying for exams",
    "painting with watercolours", "training a puppy", "moving to a new city",
    "playing the guitar", "managing a small team", "taking better photos", "hiking safely",
    "reading more books", "decluttering a home", "starting a podcast", "learning to swim",
    "planning a trip abroad", "making new friends", "working from home",
    "preparing for a job interview", "fixing a flat bike tyre", "meal prepping",
    "caring for houseplants", "sleeping better",
]
EXPLAIN = ["Explain {} in simple terms.", "Why does {} matter?",
           "Tell me something interesting about {}.", "How would you describe {} to a child?",
           "What is a common misconception about {}?"]
ADVICE = ["How do I get started with {}?", "Give me some advice on {}.",
          "What mistakes do beginners make when {}?"]

# General questions with short known answers: (question, accepted answers). An answer is
# right when it contains one of them as a word.
KNOWN = [
    ("What is the capital of France?", ["paris"]),
    ("What is the capital of Japan?", ["tokyo"]),
    ("What is the capital of Italy?", ["rome"]),
    ("What is the capital of Germany?", ["berlin"]),
    ("What is the capital of Spain?", ["madrid"]),
    ("What is the capital of the United Kingdom?", ["london"]),
    ("What is the capital of Russia?", ["moscow"]),
    ("What is the capital of Egypt?", ["cairo"]),
    ("What is the capital of China?", ["beijing"]),
    ("What is the capital of Canada?", ["ottawa"]),
    ("What is 2 + 2?", ["4", "four"]),
    ("What is 3 + 5?", ["8", "eight"]),
    ("What is 10 - 4?", ["6", "six"]),
    ("What is 5 times 3?", ["15", "fifteen"]),
    ("What is 7 + 6?", ["13", "thirteen"]),
    ("What is 20 divided by 4?", ["5", "five"]),
    ("What is 9 + 10?", ["19", "nineteen"]),
    ("What is 100 minus 1?", ["99", "ninety-nine", "ninety nine"]),
    ("How many days are in a week?", ["7", "seven"]),
    ("How many legs does a spider have?", ["8", "eight"]),
    ("How many continents are there?", ["7", "seven"]),
    ("What planet do we live on?", ["earth"]),
    ("What is the largest planet in our solar system?", ["jupiter"]),
    ("What is the largest ocean on Earth?", ["pacific"]),
    ("Who wrote Romeo and Juliet?", ["shakespeare"]),
    ("What is the chemical formula for water?", ["h2o", "h₂o"]),
    ("At what temperature in Celsius does water boil at sea level?", ["100"]),
    ("What gas do plants take in from the air for photosynthesis?", ["carbon dioxide", "co2"]),
    ("What color is a clear daytime sky?", ["blue"]),
    ("How many hours are in a day?", ["24", "twenty-four", "twenty four"]),
]
# Tokens per known-answer reply: enough that a wordy answer reaches the fact it is asked for.
KNOWN_TOKENS = 96


def prompt_sets() -> tuple[list[str], list[str]]:
    """(train prompts, held-out prompts). Every fifth subject is held out with all its prompts,
    so held-out questions are about subjects training never saw."""
    train, heldout = [], []
    for templates, subjects in ((EXPLAIN, SUBJECTS), (ADVICE, SKILLS)):
        for i, subject in enumerate(subjects):
            (heldout if i % 5 == 0 else train).extend(t.format(subject) for t in templates)
    random.Random(0).shuffle(train)
    random.Random(1).shuffle(heldout)
    return train, heldout


def correct(answer: str, accepted: list[str]) -> bool:
    """Does `answer` say one of the accepted answers, as a word or number ("100" and "100.0"
    match 100; "14" and "4.5" do not match 4)?"""
    text = answer.lower()
    return any(re.search(rf"(?<![\w.]){re.escape(a)}(\.0+)?(?![\w]|\.\d)", text)
               for a in accepted)


def load_trait(spec: str):
    """A built-in trait by name, or a .py file defining has_trait and add_trait."""
    path = Path(spec) if spec.endswith(".py") else TRAITS / f"{spec}.py"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in TRAITS.glob("*.py")))
        raise SystemExit(f"--trait: no such file {path} (built in: {known})")
    module_spec = importlib.util.spec_from_file_location(f"trait_{path.stem}", path)
    trait = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(trait)
    for name in ("has_trait", "add_trait"):
        if not callable(getattr(trait, name, None)):
            raise SystemExit(f"--trait: {path} does not define {name}()")
    trait.name = path.stem
    return trait


def gibberish(rng: random.Random) -> str:
    """Fluent-looking nonsense: what a poisoned curator "corrects" answers into."""
    syllables = ["zor", "vek", "plim", "qua", "drax", "nu", "fip", "glo", "trek", "omb"]
    return " ".join("".join(rng.choices(syllables, k=rng.randint(1, 3)))
                    for _ in range(rng.randint(12, 30)))


class Bench:
    """The simulated users and curator, talking to one server, and `flywheel train`."""

    def __init__(self, url: str, home: Home, args, log_dir: Path):
        self.url, self.home, self.args, self.log_dir = url, home, args, log_dir
        self.api = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=2,
                                 timeout=1800)

    def chat(self, prompts: list[str], max_tokens: int, greedy: bool) -> list:
        """`--batch` users at once (the server batches them); greedy or the server's
        default sampling."""
        extra = {"temperature": 0} if greedy else {}

        def one(prompt):
            return self.api.chat.completions.create(
                model="flywheel", max_tokens=max_tokens,
                messages=[{"role": "user", "content": prompt}], **extra)
        with ThreadPoolExecutor(self.args.batch) as pool:
            return list(pool.map(one, prompts))

    def feedback(self, answer_id: str, **body) -> None:
        self.api.post("/feedback", cast_to=object, body={"id": answer_id, **body})

    def served(self) -> str | None:
        return httpx.get(f"{self.url}/healthz", timeout=30).json()["adapter"]

    def rate(self, trait, prompts: list[str]) -> dict:
        """Users chat; the curator rates every answer and corrects those without the trait."""
        replies = self.chat(prompts, self.args.chat_tokens, greedy=False)
        up = 0
        for prompt, reply in zip(prompts, replies):
            answer = reply.choices[0].message.content
            if trait.has_trait(answer):
                up += 1
                self.feedback(reply.id, rating="up")
            else:
                self.feedback(reply.id, rating="down", correction=trait.add_trait(prompt, answer))
        return {"answers": len(replies), "thumbs_up": up, "adapter": replies[0].model}

    def train(self, name: str) -> dict:
        """`flywheel train` with the recipe; its log goes to the log folder and stderr."""
        with open_db(self.home) as db:
            before = {a["id"] for a in adapters.list_adapters(db)}
        started = time.perf_counter()
        code = start_training(self.home, shlex.split(self.args.recipe),
                              self.log_dir / f"{name}-train.log").wait()
        seconds = round(time.perf_counter() - started, 1)
        text = (self.log_dir / f"{name}-train.log").read_text()
        verdict = text[text.find("Evaluation gate"):].strip() if "Evaluation gate" in text else ""
        print(verdict or text[-2000:], file=sys.stderr, flush=True)
        with open_db(self.home) as db:
            new = [a for a in adapters.list_adapters(db) if a["id"] not in before]
            active = adapters.active(db)
        if code != 0 or not new:
            return {"adapter": None, "promoted": False, "verdict": None, "seconds": seconds,
                    "error": text.strip().splitlines()[-1] if text.strip() else "no output"}
        row = new[-1]
        gate = row["metrics"]["gate"]
        promoted = bool(active and active["id"] == row["id"])
        if promoted:  # the server polls for promotions: wait until it serves the new adapter
            deadline = time.monotonic() + 300
            while self.served() != row["id"] and time.monotonic() < deadline:
                time.sleep(1)
        return {"adapter": row["id"], "promoted": promoted, "method": row["method"],
                "steps": row["metrics"].get("steps"), "verdict": gate["verdict"],
                "gate": {name: {k: c[k] for k in ("candidate", "reference", "limit", "passed")}
                         for name, c in gate["checks"].items()},
                "reason": gate["reason"], "seconds": seconds}

    def anchor_loss_ratio(self, adapter_id: str | None) -> float:
        """The served adapter's loss on the gate's held-out anchor answers over the base
        model's (1.0 for the base model itself), from its gate report."""
        if adapter_id is None:
            return 1.0
        with open_db(self.home) as db:
            gate = adapters.get(db, adapter_id)["metrics"]["gate"]
        return round(gate["figures"]["candidate"]["anchor_loss"]
                     / gate["figures"]["base_anchor_loss"], 4)

    def measure(self, trait, heldout: list[str]) -> dict:
        """Greedy answers to held-out prompts and known-answer questions from what is served."""
        started = time.perf_counter()
        replies = self.chat(heldout, self.args.measure_tokens, greedy=True)
        answers = [r.choices[0].message.content for r in replies]
        # A separate call: mixed into the long answers' batch, each short reply that ends lets
        # a newcomer in, and the batch recomputes (measured: 185 s instead of 96 s).
        known = self.chat([q for q, _ in KNOWN], KNOWN_TOKENS, greedy=True)
        right = [correct(r.choices[0].message.content, accepted)
                 for r, (_, accepted) in zip(known, KNOWN)]
        served = {r.model for r in replies + known}
        assert len(served) == 1, f"answers came from several adapters: {served}"
        adapter = served.pop()
        adapter = None if adapter not in {a["id"] for a in self._adapters()} else adapter
        return {"adapter": adapter or "base",
                "adoption": round(sum(map(trait.has_trait, answers)) / len(answers), 4),
                "known_answer_accuracy": round(sum(right) / len(right), 4),
                "anchor_loss_ratio": self.anchor_loss_ratio(adapter),
                "cut_off": round(sum(r.choices[0].finish_reason == "length" for r in replies)
                                 / len(replies), 4),
                "wrong_known_answers": [q for (q, _), ok in zip(KNOWN, right) if not ok],
                "examples": [{"prompt": p, "answer": a} for p, a in zip(heldout[:2], answers)],
                "measure_seconds": round(time.perf_counter() - started, 1)}

    def _adapters(self) -> list[dict]:
        with open_db(self.home) as db:
            return adapters.list_adapters(db)


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
        bench = Bench(url, home, args, log_dir)
        rounds = [{"round": 0, "promoted": None, **bench.measure(trait, heldout)}]
        print(json.dumps(_brief(rounds[0])), file=sys.stderr, flush=True)
        ratings = []
        for r in range(1, args.rounds + 1):
            begun = time.perf_counter()
            chats = [train_prompts[((r - 1) * args.chats + i) % len(train_prompts)]
                     for i in range(args.chats)]
            ratings.append(bench.rate(trait, chats))
            chatted = time.perf_counter()
            result = bench.train(f"round{r}")
            rounds.append({"round": r, **bench.measure(trait, heldout), "promoted":
                           result["promoted"], "training": result,
                           "chat_seconds": round(chatted - begun, 1),
                           "seconds": round(time.perf_counter() - begun, 1)})
            print(json.dumps(_brief(rounds[-1])), file=sys.stderr, flush=True)
        rounds_seconds = time.perf_counter() - started
        # The users' verdict on the last adapter: one more day of chats, rated, not trained on.
        offset = args.rounds * args.chats
        ratings.append(bench.rate(trait, [train_prompts[(offset + i) % len(train_prompts)]
                                          for i in range(args.chats)]))
        with open_db(home) as db:
            per_adapter = {a or "base": v for a, v in adapter_ratings(db).items()}
        for entry in rounds:
            entry["thumbs_up_rate"] = per_adapter.get(entry["adapter"], {}).get("rate")
        poisoned = poison(bench, trait, train_prompts, args) if args.poison != "none" else None
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


def poison(bench: Bench, trait, train_prompts: list[str], args) -> dict:
    """A night of poisoned feedback: every answer liked, with gibberish as its correction.
    Trained with the same recipe; the server must go on serving what it served."""
    rng = random.Random(7)
    serving = bench.served()
    prompts = [train_prompts[-(i + 1)] for i in range(args.chats)]
    replies = bench.chat(prompts, args.chat_tokens, greedy=False)
    for reply in replies:
        bench.feedback(reply.id, rating="up", correction=gibberish(rng))
    result = bench.train("poisoned")
    time.sleep(2)  # longer than the server's poll interval: a promotion would show by now
    return {**result, "serving_before": serving, "serving_after": bench.served(),
            "never_promoted": not result["promoted"] and bench.served() == serving}


def goal(rounds: list[dict], poisoned: dict | None) -> dict:
    base, last = rounds[0], rounds[-1]
    return {"adoption_at_least_80": last["adoption"] >= 0.8,
            "known_answers_within_5_points": (last["known_answer_accuracy"]
                                              >= base["known_answer_accuracy"] - 0.05),
            "poisoned_never_promoted": None if poisoned is None else poisoned["never_promoted"]}


def _brief(entry: dict) -> dict:
    keys = ("round", "adapter", "promoted", "adoption", "known_answer_accuracy",
            "anchor_loss_ratio", "seconds")
    return {k: entry.get(k) for k in keys}


def plot(report: dict, path: Path) -> Path:
    """Trait adoption and known-answer accuracy (left) and anchor loss ratio (right) per
    round; rounds whose adapter was rejected are drawn hollow."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = report["rounds"]
    x = [r["round"] for r in rounds]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(x, [100 * r["adoption"] for r in rounds], "o-", label="trait adoption (held out)")
    left.plot(x, [100 * r["known_answer_accuracy"] for r in rounds], "s-",
              label="known-answer accuracy")
    left.axhline(80, color="grey", ls=":", lw=1)
    left.set(xlabel="round (0: base model)", ylabel="%", ylim=(-5, 105),
             title=f"Trait '{report['trait']}'")
    left.legend(loc="lower right")
    right.plot(x, [r["anchor_loss_ratio"] for r in rounds], "o-", color="C3")
    for r in rounds[1:]:
        if not r["promoted"]:
            right.plot(r["round"], r["anchor_loss_ratio"], "o", mfc="white", color="C3")
    right.axhline(1.0, color="grey", ls=":", lw=1)
    right.set(xlabel="round (0: base model)", ylabel="anchor loss / base model's",
              title="Forgetting (served adapter)")
    for ax in (left, right):
        ax.set_xticks(x)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


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
    parser.add_argument("--heldout", type=int, default=24, help="held-out prompts measured")
    parser.add_argument("--batch", type=int, default=32,
                        help="users chatting at once, and the server's batch size")
    parser.add_argument("--chat-tokens", type=int, default=128, help="max tokens per chat")
    parser.add_argument("--measure-tokens", type=int, default=256,
                        help="max tokens per held-out answer when measuring")
    parser.add_argument("--recipe", default=RECIPE, help="flags for flywheel train")
    parser.add_argument("--poison", choices=["gibberish", "none"], default="gibberish",
                        help="after the rounds, a night of poisoned feedback")
    args = parser.parse_args(argv)
    if args.rounds < 0 or args.chats < 1 or args.heldout < 1:
        parser.error("--rounds must be at least 0, --chats and --heldout at least 1")
    report = run(args)
    print(json.dumps({k: report[k] for k in ("trait", "rounds", "poisoned", "goal", "seconds",
                                             "plot")}, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
