"""`flywheel tune`: a hyperparameter search over real training runs (Optuna, TPE sampler).

Each trial is a whole `flywheel train` cycle (data, training, the gate) with settings the
sampler picks: the method (SFT then DPO among them), each stage's learning rate and epochs,
LoRA rank and alpha, the anchor and replay shares. The step budget is epochs, not a step
count: on the learning bench, a budget that follows the night's amount of data is what made
one night enough (SFT for 20 fixed steps adopted a trait on 0.28 of held-out prompts, for 4
epochs on 0.92). Trials run in a scratch copy of the data folder (the database by
SQLite's online backup, the adapters copied, the converted models shared), so nothing a trial
does reaches production: no adapter is published or promoted there, no run is recorded, and
the nightly schedule's count of new feedback is untouched.

A trial's score comes from its gate report: how much the held-out loss fell relative to the
reference's, plus how much preference accuracy rose, plus the judge's predicted win rate over
one half when the judge is trusted. A trial over the forgetting limit is pruned, whatever its
score. The best trial's settings are written as TOML, which `flywheel train --config` and
`flywheel schedule --config` read.
"""

import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from storage import Home
from storage.backup import backup
from trainer.config import TrainConfig, update

METHODS = ["sft", "dpo", "kto", "sft+dpo"]
# Learning-rate ranges per stage: SFT takes bigger steps than the preference losses, whose
# gradients beta scales down (the defaults: 2e-4 for SFT, 5e-5 for DPO and KTO).
RATES = {"sft": (1e-5, 2e-3), "dpo": (1e-6, 5e-4), "kto": (1e-6, 5e-4)}


@dataclass
class TuneConfig:
    """`flywheel tune`'s settings: each default and help line here, and nowhere else."""
    trials: int = field(default=12, metadata={"help": (
        "training runs to try; a method the data cannot train is tried once, not counted "
        "(default {default})")})
    timeout: float | None = field(default=None, metadata={"help": (
        "stop starting new trials after this many seconds (default: no limit)")})
    out: str = field(default="tuned.toml", metadata={"help": (
        "where the best settings go, as TOML for flywheel train --config (default {default})")})
    plot: str = field(default="tune.png", metadata={"help": (
        "the search's plot: each trial's score, and the best so far (default {default})")})
    seed: int = field(default=0, metadata={"help": "the sampler's seed (default {default})"})
    max_epochs: int = field(default=6, metadata={"help": (
        "most epochs a trial's stage may train (default {default})")})


def suggest(trial, max_epochs: int = 6) -> dict:
    """The settings one trial trains with, as a TOML document's tables: each stage's own
    learning rate and epochs under its name (SFT then DPO has two), one LoRA shape for all
    (DPO continues the SFT stage's adapter)."""
    method = trial.suggest_categorical("method", METHODS)
    rank = trial.suggest_categorical("lora_r", [4, 8, 16, 32])
    alpha = rank * trial.suggest_categorical("alpha_per_rank", [1, 2, 4])
    settings: dict = {
        "method": method,
        "anchor_share": round(trial.suggest_float("anchor_share", 0.0, 0.5), 3),
        "replay_share": round(trial.suggest_float("replay_share", 0.0, 1.0), 3)}
    for stage in method.split("+"):
        rate = trial.suggest_float(f"{stage}_learning_rate", *RATES[stage], log=True)
        settings[stage] = {"learning_rate": float(f"{rate:.3g}"),
                           "epochs": trial.suggest_int(f"{stage}_epochs", 1, max_epochs),
                           "max_steps": -1, "lora_r": rank, "lora_alpha": alpha}
    return settings


def stages(settings: dict) -> str:
    """A trial's stages in a few words: "sft 0.0005 x 4 ep, dpo 0.0001 x 2 ep"."""
    return ", ".join(f"{stage} {settings[stage]['learning_rate']:.2g} x "
                     f"{settings[stage]['epochs']} ep" for stage in settings["method"].split("+"))


def score(gate: dict) -> float:
    """Higher is better: the relative fall in held-out loss, the rise in preference accuracy,
    and the judge's predicted win rate over one half (when trusted), each where measured."""
    checks, total = gate["checks"], 0.0
    if "heldout_loss" in checks and checks["heldout_loss"]["reference"]:
        held = checks["heldout_loss"]
        total += (held["reference"] - held["candidate"]) / held["reference"]
    if "preference_accuracy" in checks:
        pref = checks["preference_accuracy"]
        total += pref["candidate"] - pref["reference"]
    judged = gate.get("judge", {})
    if judged.get("trusted") and judged.get("rate") is not None:
        total += judged["rate"] - 0.5
    return total


def scratch_copy(home: Home, into: Path) -> Home:
    """A copy of `home` to run trials in: the database and adapters backed up, the converted
    models and caches linked (read, not changed)."""
    backup(home, into)
    for shared in ("models", "cache"):
        if (home.root / shared).is_dir():
            os.symlink(home.root / shared, into / shared)
    return Home(into)


def search(home: Home, base: TrainConfig, config: TuneConfig) -> tuple:
    """Run the trials; returns (the Optuna study, each trial's row for the table)."""
    import optuna

    from trainer.train import FeedbackRefused, NotEnoughData, run_cycle
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows: list[dict] = []
    untrainable: set[str] = set()  # methods the data cannot train (too few pairs, say)
    refused: list[FeedbackRefused] = []  # the same for every trial: the search stops
    scratch_root = Path(tempfile.mkdtemp(prefix="flywheel-tune-"))
    scratch = scratch_copy(home, scratch_root / "home")

    def objective(trial) -> float:
        settings = suggest(trial, config.max_epochs)
        trial.set_user_attr("settings", settings)
        if settings["method"] in untrainable:  # tried once already: no run, no row, no count
            raise optuna.TrialPruned(f"{settings['method']}: not enough data")
        row = {"trial": trial.number, **trial.params, "stages": stages(settings)}
        rows.append(row)
        started = time.perf_counter()
        # Manual promotion: a passing trial never becomes the scratch copy's reference. Every
        # trial after the first finds no feedback newer than the trial before: none is asked.
        trial_config = update(base, {**settings, "promotion": "manual", "min_new_feedback": 0})
        try:
            adapter = run_cycle(scratch, trial_config.validate())
        except FeedbackRefused as exc:
            refused.append(exc)
            row.update(outcome="refused before training")
            trial.study.stop()
            raise optuna.TrialPruned(str(exc)) from None
        except NotEnoughData as exc:
            row.update(outcome=f"not enough data: {exc}")
            untrainable.add(settings["method"])
            raise optuna.TrialPruned(str(exc)) from None
        finally:
            row["seconds"] = round(time.perf_counter() - started)
        trial.set_user_attr("trained", True)
        gate = adapter["metrics"]["gate"]
        forgetting = gate["checks"].get("forgetting")
        row.update(verdict=gate["verdict"], score=round(score(gate), 4),
                   forgetting=forgetting and forgetting["candidate"])
        if forgetting and not forgetting["passed"]:
            row["outcome"] = "pruned: over the forgetting limit"
            raise optuna.TrialPruned("over the forgetting limit")
        row["outcome"] = "scored"
        return row["score"]

    def enough(study, _trial) -> None:
        """`--trials` counts trials that trained: a method the data cannot train costs one
        data pass (seconds), then is never tried again, and stops the search once every
        method is out."""
        trained = sum(t.user_attrs.get("trained", False) for t in study.trials)
        if trained >= config.trials or untrainable >= set(METHODS):
            study.stop()

    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=config.seed))
    try:
        study.optimize(objective, timeout=config.timeout, callbacks=[enough])
    finally:
        shutil.rmtree(scratch_root, ignore_errors=True)
    if refused:
        raise refused[0]
    return study, rows


def best_settings(study) -> dict:
    """The best trial's settings, as `suggest` made them."""
    return study.best_trial.user_attrs["settings"]


def write_best(study, path: Path) -> Path:
    """Write the best settings as TOML (written whole, then renamed into place)."""
    import tomli_w

    from storage import write_atomic
    return write_atomic(Path(path), tomli_w.dumps(best_settings(study)))


def plot(study, path: Path) -> Path:
    """Each trial's score and the best so far (Optuna's optimization history), as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization.matplotlib import plot_optimization_history
    with warnings.catch_warnings():  # "experimental" since Optuna 2.2; its output is what we want
        warnings.simplefilter("ignore", ExperimentalWarning)
        ax = plot_optimization_history(study)
    ax.set_title("flywheel tune: each trial's score (gate figures) and the best so far")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    ax.figure.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(ax.figure)
    tmp.replace(path)
    return path


def trial_table(rows: list[dict]):
    """The trials as a rich table, for the terminal."""
    from rich.table import Table
    table = Table(title="flywheel tune: trials")
    columns = ["trial", "method", "stages", "lora_r", "alpha_per_rank", "anchor_share",
               "replay_share", "verdict", "forgetting", "score", "seconds", "outcome"]
    for column in columns:
        table.add_column(column.replace("_", " "))
    for row in rows:
        table.add_row(*[_cell(row.get(c)) for c in columns])
    return table


def _cell(value) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3g}"
    return "-" if value is None else str(value)

