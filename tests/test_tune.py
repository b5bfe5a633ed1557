"""`flywheel tune`: real training trials on the tiny model, in a copy of the data folder; the
best settings written as TOML that `flywheel train --config` reads, and a plot."""

import tomllib

from flywheel.cli import main
from storage import adapters, open_db, runs
from tests.conftest import add_answers
from trainer.config import load
from trainer.tune import METHODS

QUICK = ["--set", "validation_share=0.3", "--set", "anchor_share=0.0", "--set", "min_examples=4",
         "--set", "gate.max_unreadable_feedback=1", "--set", "gate.anchor_examples=4",
         "--set", "gate.generation_prompts=2", "--set", "gate.max_new_tokens=8",
         "--set", "gate.known_facts=4", "--set", "gate.fact_tokens=8",
         "--set", "gate.counterfactual_pairs=6"]


def test_tune_trains_real_trials_that_never_reach_production(home, tiny_model_dir, tmp_path,
                                                              capsys):
    add_answers(home, 24, correct_every=2)
    out, plot = tmp_path / "best.toml", tmp_path / "tune.png"
    code = main(["tune", "--home", str(home.root), "--model", str(tiny_model_dir), "--trials",
                 "3", "--out", str(out), "--plot", str(plot), *QUICK])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "flywheel tune: trials" in printed and "Best: trial" in printed
    best = tomllib.loads(out.read_text())
    assert best["method"] in METHODS and 0 < best[best["method"]]["learning_rate"] < 1
    # What train --config reads: the method's own learning rate, steps and LoRA shape.
    config = load(out)
    settings = config.methods()[best["method"]]
    assert settings.max_steps == best[best["method"]]["max_steps"] >= 5
    assert settings.lora_alpha == best[best["method"]]["lora_alpha"]
    assert plot.read_bytes()[:4] == b"\x89PNG"
    # Trials ran in a copy: no adapter and no run here, so tonight's count is untouched.
    with open_db(home) as db:
        assert adapters.list_adapters(db) == [] and runs.list_runs(db) == []


def test_tune_refuses_a_bad_trial_budget_in_one_line(home, capsys):
    assert main(["tune", "--home", str(home.root), "--trials", "0"]) == 2
    assert capsys.readouterr().err.strip() == \
        "flywheel: error: --trials must be at least 1 and --timeout above 0"
