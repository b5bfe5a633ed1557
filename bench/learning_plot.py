"""The learning benchmark's plot: trait adoption, known-answer accuracy and forgetting per
round, as a PNG beside the JSON report."""

from pathlib import Path


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
