"""The learning benchmark's plot: trait adoption, known-answer accuracy and forgetting per
round, as a PNG beside the JSON report."""

from pathlib import Path


def plot(report: dict, path: Path) -> Path:
    """Trait adoption and known-answer accuracy with their 95% intervals (left) and anchor
    loss ratio (right) per round; rounds whose adapter was rejected are drawn hollow."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = report["rounds"]
    x = [r["round"] for r in rounds]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, marker, label in (("adoption", "o-", "trait adoption (held out)"),
                               ("known_answer", "s-", "known-answer accuracy")):
        value = [100 * r["adoption" if key == "adoption" else "known_answer_accuracy"]
                 for r in rounds]
        # The 95% Wilson interval as error bars (reports from before it had none).
        low = [v - 100 * r[f"{key}_interval"][0] if r.get(f"{key}_interval") else 0
               for v, r in zip(value, rounds)]
        high = [100 * r[f"{key}_interval"][1] - v if r.get(f"{key}_interval") else 0
                for v, r in zip(value, rounds)]
        left.errorbar(x, value, yerr=[low, high], fmt=marker, capsize=4, label=label)
    for target in (90, 95):  # the adoption goals: after one round, after three
        left.axhline(target, color="grey", ls=":", lw=1)
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
