"""What a run shows while it trains and after: live progress rows for the admin page, and the
loss curves as a PNG kept with the run."""

import json
import os
import time
from pathlib import Path

from tqdm import tqdm
from transformers import TrainerCallback

from storage import Home, open_db, runs, write_atomic
from storage.db import utc_now

MAX_LIVE_LOSSES = 500  # points of the running stage's loss kept for the page's live curve
_REPORT_TO: dict = {}  # the run that this process's phase bars write to (home, run_id)


def report_to(home: Home, run_id: str) -> None:
    """From now on, phase bars in this process write into `run_id`'s progress."""
    _REPORT_TO.update(home=home, run_id=run_id)


def stop_reporting() -> None:
    """Phase bars write to the terminal alone again (the run ended, or never started)."""
    _REPORT_TO.clear()


class PhaseBar(tqdm):
    """tqdm's bar in the terminal, and the same count in the running run's progress (at most
    once a second) so that the admin page shows each phase's count and time left: the
    feedback selected and deduplicated, anchor answers, the gate's scoring; when it closes,
    what it did is kept under its phase. tqdm has no sink for a database; this is the whole
    of one."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._started, self._written = utc_now(), 0.0
        self._report()

    def update(self, n=1):
        """Advance the bar by `n`; write to the run's progress at most once a second."""
        shown = super().update(n)
        if time.monotonic() - self._written >= 1 or self.n >= (self.total or 0):
            self._report()
        return shown

    def close(self):
        """Close the bar, noting what it counted under the run's phase (if anything)."""
        if not self.disable and _REPORT_TO and self.n:  # what it did stays on the admin page
            with open_db(_REPORT_TO["home"]) as db:
                runs.note_task_done(db, _REPORT_TO["run_id"],
                                    f"{self.desc}: {self.n:,} {self.unit.strip()}")
        super().close()

    def _report(self) -> None:
        if not _REPORT_TO or self.disable:
            return
        self._written = time.monotonic()
        with open_db(_REPORT_TO["home"]) as db:
            runs.set_progress(db, _REPORT_TO["run_id"], task=self.desc, done=self.n,
                              total=self.total, unit=self.unit, task_started=self._started)


class ProgressToDatabase(TrainerCallback):
    """Writes step, loss and validation loss into the run's `progress` as training goes (the
    terminal gets the Trainer's own tqdm bar). Only the main process writes."""

    def __init__(self, home: Home, run_id: str, stage: str):
        self.home, self.run_id, self.stage = home, run_id, stage

    def _write(self, state, **fields) -> None:
        if not state.is_world_process_zero:
            return
        with open_db(self.home) as db:
            runs.set_progress(db, self.run_id, phase="training", stage=self.stage,
                              step=state.global_step, max_steps=state.max_steps,
                              epoch=round(state.epoch or 0, 3), task=None, **fields)

    def on_train_begin(self, args, state, control, **kwargs):
        """Record the stage's start (step and time), its live losses emptied."""
        # Not the previous stage's losses; the stage's start time gives the time left.
        self.losses: list[list[float]] = []
        self._write(state, loss=None, eval_loss=None, losses=[], task_started=utc_now(),
                    first_step=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Write the logged loss and validation loss, the loss also to the live curve."""
        logs = logs or {}
        fields = {k: round(v, 4) for k, v in logs.items() if k in ("loss", "eval_loss")}
        if "loss" in fields:  # the live curve: every other point dropped when it is full
            self.losses.append([state.global_step, fields["loss"]])
            if len(self.losses) > MAX_LIVE_LOSSES:
                self.losses = self.losses[::2]
            fields["losses"] = self.losses
        if fields:
            self._write(state, **fields)


def curves(log_history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) points of the training loss and the validation loss."""
    out: dict[str, list] = {"loss": [], "eval_loss": []}
    for entry in log_history:
        for key in out:
            if key in entry and "step" in entry:
                out[key].append((entry["step"], entry[key]))
    return out


def plot_losses(stages: dict[str, list[dict]], path: Path, title: str) -> Path:
    """One panel per training stage: training loss per step and validation loss at each
    evaluation, the best evaluation marked. Written to a temporary file, then renamed."""
    import matplotlib
    matplotlib.use("Agg")  # no screen needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, len(stages)), figsize=(6 * max(1, len(stages)), 4),
                             squeeze=False)
    for ax, (stage, history) in zip(axes[0], stages.items()):
        points = curves(history)
        if points["loss"]:
            ax.plot(*zip(*points["loss"]), label="training loss", color="tab:blue", alpha=0.8)
        if points["eval_loss"]:
            ax.plot(*zip(*points["eval_loss"]), "o-", label="validation loss", color="tab:orange")
            best = min(points["eval_loss"], key=lambda p: p[1])
            ax.plot(*best, "*", markersize=14, color="tab:red", label=f"best (step {best[0]})")
        ax.set_title(stage.upper())
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}-{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def save_json(path: Path, value) -> None:
    """Write JSON all at once (storage.write_atomic): never half a file."""
    write_atomic(path, json.dumps(value, indent=1, default=str))
