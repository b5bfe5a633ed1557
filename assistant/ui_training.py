"""The Admin tab's training section: Train now (`flywheel train` in its own process, the
server keeps serving) and the progress of whatever run is going, read from the database (so
nightly runs show too): each phase done, going or to come, the time left, the live loss curve.

The page's API: /train_now, /training_progress.
"""

import subprocess
from datetime import datetime, timezone
from pathlib import Path

import gradio as gr

from assistant.plots import loss_figure
from assistant.training_process import start_training
from assistant.ui import Page
from storage import lock, open_db, runs

PHASES = ["data", "training", "evaluating", "publishing", "done"]  # a run's, in order


def time_left(started: str | None, done: int, total: int | None, first: int = 0) -> str:
    """'about 4 min left' from the rate so far (steps or answers since `started`)."""
    if not started or not total or done <= first:
        return "time left: after the first one"
    elapsed = (datetime.now(timezone.utc) - datetime.fromisoformat(
        started.replace("Z", "+00:00"))).total_seconds()
    seconds = elapsed / (done - first) * (total - done)
    if seconds < 60:
        return "less than a minute left"
    minutes = round(seconds / 60)
    return f"about {minutes} min left" if minutes < 90 else \
        f"about {minutes // 60} h {minutes % 60:02d} min left"


def run_progress(home, run: dict | None) -> str:
    """A run's phases as one line each done (✓), going (▶) or to come (·), with the count and
    the time left of the one going; the last line says what the run did."""
    if run is None:
        return "No training run yet."
    p = run["progress"]
    state = run["status"]
    if state == "running" and not lock.training_in_progress(home):
        state = "interrupted (resume with `flywheel train --resume`)"
    lines = [f"**{run['id']}** ({run['method'] or 'method picked after the data'}): {state}"]
    phase = p.get("phase", "data")
    at = PHASES.index(phase) if phase in PHASES else 0
    finished = p.get("finished", {})  # what each phase's finished tasks did
    for n, name in enumerate(PHASES[:-1]):
        if n > 0 and p.get("refused_before_training"):  # the data was refused: nothing ran
            lines.append(f"- · {name} (skipped)")
            continue
        if n < at or phase == "done":
            did = "; ".join(finished.get(name, []))
            lines.append(f"- ✓ {name}{f' ({did})' if did else ''}")
            continue
        if n > at:
            lines.append(f"- · {name}")
            continue
        detail = ""
        if name == "training" and p.get("max_steps"):
            step, total = p.get("step", 0), p["max_steps"]
            detail = (f": stage {p.get('stage', '')}, step {step} of {total}, "
                      f"{time_left(p.get('task_started'), step, total, p.get('first_step', 0))}")
            detail += "".join(f" · {label} {p[key]}" for key, label in
                              (("loss", "loss"), ("eval_loss", "validation loss"))
                              if p.get(key) is not None)
        elif p.get("task") and p.get("total"):
            detail = (f": {p['task']}, {p.get('done', 0)} of {p['total']} {p.get('unit', '')}, "
                      f"{time_left(p.get('task_started'), p.get('done', 0), p['total'])}")
        if finished.get(name):
            detail += f" (done: {'; '.join(finished[name])})"
        lines.append(f"- ▶ **{name}**{detail}")
    if phase == "done":
        lines.append(f"\nDone: {p.get('decision', 'finished')}.")
    if run.get("error"):
        lines.append(f"\nFailed: {run['error']}")
    return "\n".join(lines)


def live_losses(run: dict | None):
    """The running stage's loss curve (a figure), while its run trains; None otherwise."""
    if not run or run["status"] != "running" or not run["progress"].get("losses"):
        return None
    points = run["progress"]["losses"]
    return loss_figure({f"{run['id']} ({run['progress'].get('stage', '')}), live":
                        [loss for _, loss in points]}, steps=[step for step, _ in points])


class Training:
    """The page, and the one training process this server started (Train now), if any."""

    def __init__(self, page: Page):
        self.page = page
        self.process: subprocess.Popen | None = None
        self.log: Path | None = None  # its output


def train_now(training: Training, request: gr.Request) -> str:
    """Start `flywheel train` in its own process (the server keeps serving)."""
    page = training.page
    page.user(request, "admin")
    process = training.process
    if process is not None and process.poll() is None:
        raise gr.Error("A training run started here is still going.")
    log_path = page.home.runs_dir / "train-now.log"
    model = ["--model", page.model_spec] if page.model_spec else []
    training.process = start_training(page.home, model, log_path, detached=True)
    training.log = log_path
    return "Training started."


def progress(training: Training, request: gr.Request) -> str:
    """The newest run's phases from the database (whoever started it: the nightly
    schedule too), then how a run started from this page ended, in its last line."""
    training.page.user(request, "admin")
    with open_db(training.page.home) as db:
        newest = runs.latest(db)
    return progress_text(training, newest)


def progress_text(training: Training, newest: dict | None) -> str:
    text = run_progress(training.page.home, newest)
    process, log = training.process, training.log
    if process is None or log is None:
        return text
    if process.poll() is None:
        return f"{text}\n\nTraining started here is running (its output: `{log}`)."
    # The output's last line says why a run ended (or never began: too little data);
    # the terminal's progress bars (carriage returns) are not lines.
    output = log.read_text(errors="replace").splitlines()
    said = next((line.rsplit("\r", 1)[-1].strip() for line in reversed(output)
                 if line.rsplit("\r", 1)[-1].strip()), "")
    return (f"{text}\n\nTraining started here finished (exit {process.returncode}): "
            f"{said} (its output: `{log}`)")


def progress_in_page(training: Training, request: gr.Request):
    """The phases and, while a run trains, its live loss curve."""
    training.page.user(request, "admin")
    with open_db(training.page.home) as db:
        newest = runs.latest(db)
    figure = live_losses(newest)
    return progress_text(training, newest), gr.Plot(value=figure, visible=figure is not None)
