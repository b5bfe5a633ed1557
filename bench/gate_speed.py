"""How long the evaluation gate's measuring takes at one batch size against another, in one
process on the same model (ratios, not absolute times from another machine): its greedy
answers (the degeneration check's prompts, the known facts) and its scored replies (the
counterfactual pairs, the fact margins). Also whether the greedy answers are the same at
both sizes (left padding may move a borderline token).

    python bench/gate_speed.py [--sizes 8,16] [--repeats 2] [--home DIR]

Prints JSON: per measure and batch size, the median seconds, and each size's time over the
first size's.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project before bench/

from assistant import models  # noqa: E402
from storage import Home  # noqa: E402
from trainer import anchor, bias_check, known_facts  # noqa: E402
from trainer.config import GateConfig  # noqa: E402
from trainer.scoring import answer_logprobs, generate  # noqa: E402


def measures(gate: GateConfig) -> dict:
    """What the gate measures on each version, as (kind, rows, max_new_tokens) per measure."""
    prompts = [[{"role": "user", "content": p}]
               for p in anchor.spread(anchor.HELDOUT_PROMPTS, gate.generation_prompts)]
    facts = known_facts.load(gate.known_facts)
    return {
        "answers": ("generate", prompts, gate.max_new_tokens),
        "known facts": ("generate", [[{"role": "user", "content": f["question"]}]
                                     for f in facts], gate.fact_tokens),
        "counterfactual pairs": ("score", bias_check.rows(bias_check.load(
            gate.counterfactual_pairs)), None),
        "fact margins": ("score", known_facts.reply_rows(facts, "answer")
                         + known_facts.reply_rows(facts, "wrong"), None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="8,16", help="batch sizes, the first the baseline")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each, interleaved")
    parser.add_argument("--home", help="FLYWHEEL_HOME (model cache); default a new temp dir")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    home = Home.resolve(args.home or tempfile.mkdtemp(prefix="flywheel-gate-speed-"))
    model, tokenizer = models.load(models.resolve(None, home))
    model.eval()
    gate = GateConfig()
    report = {}
    for name, (kind, rows, tokens) in measures(gate).items():
        seconds: dict[int, list[float]] = {s: [] for s in sizes}
        texts: dict[int, list[str]] = {}
        for _ in range(args.repeats):  # interleaved, so drift hits every size alike
            for size in sizes:
                started = time.perf_counter()
                if kind == "generate":
                    texts[size] = [a["text"] for a in generate(model, tokenizer, rows, tokens,
                                                                size, name)]
                else:
                    answer_logprobs(model, tokenizer, rows, size, name)
                seconds[size].append(time.perf_counter() - started)
        medians = {s: statistics.median(v) for s, v in seconds.items()}
        entry = {"rows": len(rows),
                 "seconds": {str(s): round(m, 2) for s, m in medians.items()},
                 "over_first": {str(s): round(m / medians[sizes[0]], 3)
                                for s, m in medians.items()}}
        if texts:
            entry["same_answers_as_first"] = {
                str(s): sum(a == b for a, b in zip(t, texts[sizes[0]])) / len(rows)
                for s, t in texts.items()}
        report[name] = entry
        print(json.dumps({name: entry}), file=sys.stderr, flush=True)
    total = {str(s): round(sum(e["seconds"][str(s)] for e in report.values()), 2)
             for s in sizes}
    print(json.dumps({"model": models.EMBEDDED_NAME, "batch_sizes": sizes,
                      "measures": report, "total_seconds": total,
                      "total_over_first": {s: round(t / total[str(sizes[0])], 3)
                                           for s, t in total.items()}}, indent=2))


if __name__ == "__main__":
    main()
