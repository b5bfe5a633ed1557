"""The admin page's figures (matplotlib). "Did it help?": three panels on one time axis,

    thumbs-up rate per adapter per day, each point with its 95% interval (few ratings: a
    long bar, so one lucky day does not read as a win)
    answers per day
    feedback per day, by kind (thumbs, scores, corrections, side-by-side picks)

with a dashed line at each promotion (and a red one at each rollback) through all three, so
the effect of a swap is read straight down the page. And the newest runs' training loss.
Gradio's native plots draw neither intervals nor marker lines, and their SVG marks have no
text for a screen reader (axe: svg-img-alt); an image has one.
"""

from datetime import datetime, timedelta

from matplotlib.dates import DateFormatter, DayLocator
from matplotlib.figure import Figure

from storage.activity import Activity

KINDS = [("thumbs", "thumbs"), ("score", "scores"), ("correction", "corrections"),
         ("comparison", "side-by-side picks")]


def _day(text: str) -> datetime:
    return datetime.fromisoformat(text[:19].replace("Z", ""))


def activity_figure(activity: Activity) -> Figure | None:
    """The figure, or None when nothing has been answered yet."""
    if not activity.volume:
        return None
    # No pyplot: a Figure of its own is safe in the server's worker threads.
    fig = Figure(figsize=(10, 8.5), layout="constrained")
    rate, answers, feedback = fig.subplots(3, 1, sharex=True,
                                           gridspec_kw={"height_ratios": [2, 1, 1]})
    width = timedelta(days=activity.period * 0.8)
    # Bars and points sit in the middle of their period.
    middle = timedelta(days=activity.period / 2)

    names = list(dict.fromkeys(p["adapter"] for p in activity.thumbs))
    for n, adapter in enumerate(names):
        points = [p for p in activity.thumbs if p["adapter"] == adapter]
        # Each adapter a little to the side of the others, so their intervals do not hide
        # each other.
        shift = width * ((n + 0.5) / len(names) - 0.5)
        x = [_day(p["start"]) + middle + shift for p in points]
        y = [p["rate"] for p in points]
        spread = [[p["rate"] - p["low"] for p in points], [p["high"] - p["rate"] for p in points]]
        rate.errorbar(x, y, yerr=spread, fmt="o", capsize=2, markersize=4, label=adapter,
                      alpha=0.85, elinewidth=1)
    rate.set_ylim(0, 1)
    rate.set_ylabel("thumbs-up rate")
    rate.set_title("Thumbs-up rate per adapter (95% interval)"
                   + ("" if activity.period == 1 else f", per {activity.period} days"))
    if activity.thumbs:
        rate.legend(loc="lower left", fontsize="small", ncols=4)

    x = [_day(r["start"]) + middle for r in activity.volume]
    answers.bar(x, [r["answers"] for r in activity.volume], width=width, color="tab:gray")
    answers.set_ylabel("answers")

    bottom = [0] * len(x)
    for kind, label in KINDS:
        counts = [r[kind] for r in activity.volume]
        if any(counts):
            feedback.bar(x, counts, width=width, bottom=bottom, label=label)
            bottom = [b + c for b, c in zip(bottom, counts)]
    feedback.set_ylabel("feedback")
    if any(bottom):
        feedback.legend(loc="upper left", fontsize="small", ncols=4)

    for event in activity.promotions:
        at = _day(event["at"])
        colour = "tab:red" if event["action"] == "rollback" else "tab:green"
        for ax in (rate, answers, feedback):
            ax.axvline(at, color=colour, linestyle="--", linewidth=1)
        verb = "rolled back to" if event["action"] == "rollback" else "promoted"
        rate.text(at, 0.98, f" {verb} {event['adapter']}", transform=rate.get_xaxis_transform(),
                  fontsize="small", color=colour, rotation=90, ha="right", va="top",
                  bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    for ax in (rate, answers, feedback):
        ax.grid(alpha=0.3)
    # Whole days, one date format on every label (the old plot mixed 24-hour and 12-hour
    # times), and at least a week wide: a new install's one day is not stretched into hours.
    first = _day(activity.volume[0]["start"]) - timedelta(days=1)
    last = max(_day(activity.volume[-1]["start"]) + timedelta(days=activity.period + 1),
               first + timedelta(days=7))
    feedback.set_xlim(first, last)
    feedback.xaxis.set_major_locator(DayLocator(interval=max(1, (last - first).days // 10)))
    feedback.xaxis.set_major_formatter(DateFormatter("%Y-%m-%d"))
    fig.autofmt_xdate()
    return fig


def loss_figure(curves: dict[str, list[float]], steps: list[int] | None = None
                ) -> Figure | None:
    """Training loss per step of each run, or None when no run logged one. `steps`: the
    step of each point when they are not 1, 2, 3... (a running job's thinned curve)."""
    curves = {run: losses for run, losses in curves.items() if losses}
    if not curves:
        return None
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax = fig.subplots()
    for run, losses in curves.items():
        ax.plot(steps or range(1, len(losses) + 1), losses, label=run, alpha=0.85)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig
