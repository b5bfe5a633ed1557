"""`flywheel tune`: real training trials on the tiny model, in a copy of the data folder; the
best settings written as TOML that `flywheel train --config` reads, and a plot."""

import tomllib

import optuna
import tomli_w

from flywheel.cli import main
from storage import adapters, open_db, runs
from tests.conftest import add_answers
from trainer.config import load
from trainer.tune import METHODS, stages, suggest

QUICK = ["--set", "validation_share=0.3", "--set", "anchor_share=0.0", "--set", "min_examples=4",
         "--set", "gate.max_unreadable_feedback=1", "--set", "gate.anchor_examples=4",
         "--set", "gate.generation_prompts=2", "--set", "gate.max_new_tokens=8",
         "--set", "gate.known_facts=4", "--set", "gate.fact_tokens=8",
         "--set", "gate.counterfactual_pairs=6",
         # these corrections rewrite the answer; DPO trials may still learn from them
         "--set", "dpo.skip_if_added_words=0"]


def test_tune_trains_real_trials_that_never_reach_production(home, tiny_model_dir, tmp_path,
                                                              capsys):
    add_answers(home, 24, correct_every=2)
    out, plot = tmp_path / "best.toml", tmp_path / "tune.png"
    code = main(["tune", "--home", str(home.root), "--model", str(tiny_model_dir), "--trials",
                 "3", "--max-epochs", "2", "--out", str(out), "--plot", str(plot), *QUICK])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "flywheel tune: trials" in printed and "Best: trial" in printed
    assert " ep" in printed  # each trial's stages: learning rate x epochs
    assert "alpha per rank" in printed  # piped, the table keeps whole column names
    best = tomllib.loads(out.read_text())
    assert best["method"] in METHODS
    # What train --config reads: each stage's own learning rate, epochs (a step budget that
    # follows the amount of data) and LoRA shape.
    config = load(out)
    for stage in best["method"].split("+"):
        settings = config.methods()[stage]
        assert 0 < settings.learning_rate == best[stage]["learning_rate"] < 1
        assert settings.max_steps == -1 and 1 <= settings.epochs == best[stage]["epochs"] <= 2
        assert settings.lora_alpha == best[stage]["lora_alpha"]
    assert plot.read_bytes()[:4] == b"\x89PNG"
    # Trials ran in a copy: no adapter and no run here, so tonight's count is untouched.
    with open_db(home) as db:
        assert adapters.list_adapters(db) == [] and runs.list_runs(db) == []


def test_tune_refuses_a_bad_trial_budget_in_one_line(home, capsys):
    assert main(["tune", "--home", str(home.root), "--trials", "0"]) == 2
    assert capsys.readouterr().err.strip() == \
        "flywheel: error: --trials and --max-epochs must be at least 1 and --timeout above 0"


def test_a_trial_of_sft_then_dpo_trains_each_stage_with_its_own_rate_and_epochs(tmp_path):
    trial = optuna.trial.FixedTrial({
        "method": "sft+dpo", "lora_r": 8, "alpha_per_rank": 2, "anchor_share": 0.25,
        "replay_share": 1.0, "sft_learning_rate": 5e-4, "sft_epochs": 4,
        "dpo_learning_rate": 1e-4, "dpo_epochs": 2})
    settings = suggest(trial)
    path = tmp_path / "best.toml"
    path.write_text(tomli_w.dumps(settings))
    config = load(path)
    sft, dpo = config.methods()["sft"], config.methods()["dpo"]
    assert config.method == "sft+dpo"
    assert (sft.learning_rate, sft.epochs, sft.max_steps) == (5e-4, 4, -1)
    assert (dpo.learning_rate, dpo.epochs, dpo.max_steps) == (1e-4, 2, -1)
    assert (sft.lora_r, sft.lora_alpha) == (dpo.lora_r, dpo.lora_alpha) == (8, 16)
    assert stages(settings) == "sft 0.0005 x 4 ep, dpo 0.0001 x 2 ep"


def test_trials_count_only_runs_that_trained(home, tiny_model_dir, tmp_path, capsys):
    # Thumbs up alone: SFT can train, DPO and KTO (no pairs, no thumbs down) cannot. Each
    # such method is tried once (a data pass) and not counted; the budget goes to SFT.
    add_answers(home, 8)
    code = main(["tune", "--home", str(home.root), "--model", str(tiny_model_dir), "--trials",
                 "2", "--max-epochs", "1", "--out", str(tmp_path / "best.toml"),
                 "--plot", str(tmp_path / "tune.png"), *QUICK])
    printed = capsys.readouterr().out
    assert code == 0, printed
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in printed.splitlines()]
    trials = [(row[1], row[-1]) for row in cells if row and row[0].isdigit()]  # method, outcome
    assert [method for method, outcome in trials
            if not outcome.startswith("not enough")] == ["sft", "sft"]
    untrainable = [method for method, outcome in trials if outcome.startswith("not enough")]
    assert sorted(untrainable) == sorted(set(untrainable)), printed  # each tried once at most
    assert "sft" not in untrainable and len(trials) == 2 + len(untrainable)
    # The seeded sampler asks for untrainable methods again (trials 3 to 8 under seed 0):
    # those were dropped at once, without a row.
    numbers = [int(row[0]) for row in cells if row and row[0].isdigit()]
    assert max(numbers) + 1 > len(numbers), printed


def test_tune_says_in_one_line_when_the_feedback_is_refused_before_training(home, tiny_model_dir,
                                                                            tmp_path, capsys):
    add_answers(home, 8)  # the tiny model's random weights find every text unreadable
    code = main(["tune", "--home", str(home.root), "--model", str(tiny_model_dir), "--trials",
                 "2", "--out", str(tmp_path / "best.toml"), *QUICK,
                 "--set", "gate.max_unreadable_feedback=0.05", "--set", "validation_share=0"])
    assert code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the data phase's progress bars
    assert last.startswith("flywheel: error: the feedback is refused before training: 100.0% "
                           "of the 8 answers"), last
    assert "Traceback" not in err
    assert not (tmp_path / "best.toml").exists()
