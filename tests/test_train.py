"""`flywheel train` on the tiny model: data, method choice, settings, the overfitting guards,
the lock, continuing the active adapter, mixing, progress. The gate's verdict and the
promotion policy are in test_train_gate.py."""

import json
from collections import Counter

import pytest
from safetensors.torch import load_file

from assistant.ui_training import live_losses, run_progress
from flywheel.cli import main
from storage import adapters, lock, open_db, runs
from storage import chat as store
from tests.conftest import add_answers, train_config
from trainer import anchor, methods
from trainer.anchor import TOPICS
from trainer.config import TrainConfig, load
from trainer.dataset import example_hash
from trainer.mixing import gather
from trainer.selection import select
from trainer.train import NotEnoughData, new_plan, run_cycle


def test_sft_dataset_takes_liked_answers_and_corrections_with_the_whole_prompt(home):
    liked = add_answers(home, 2)
    disliked = add_answers(home, 1, rating="down", start=2)
    with open_db(home) as db:
        store.add_correction(db, disliked[0], "A better answer.")
        store.add_correction(db, liked[0], "Corrected instead.")  # the correction wins
        examples = select(db)["sft"]
    by_id = {e["message_ids"][0]: e for e in examples}
    assert set(by_id) == set(liked) | set(disliked)
    assert by_id[liked[1]]["prompt"] == [{"role": "system", "content": "Answer briefly."},
                                         {"role": "user",
                                          "content": f"Question 1: what is {TOPICS[1]}?"}]
    assert by_id[liked[1]]["completion"] == [{"role": "assistant",
                                              "content": f"Answer 1: {TOPICS[-2]}."}]
    assert by_id[liked[0]]["completion"][0]["content"] == "Corrected instead."
    assert by_id[disliked[0]]["source"] == "correction"
    assert Counter(e["source"] for e in examples) == {"liked": 1, "correction": 2}
    assert len({example_hash(e) for e in examples}) == 3


def sizes(sft=0, dpo=0, kto=0, kto_down=0, dpo_left_out=0, **train_splits):
    return {"sft": sft, "dpo": dpo, "kto": kto, "kto_down": kto_down,
            "dpo_left_out": dpo_left_out, **train_splits}


def test_auto_picks_the_method_from_the_data_and_says_why():
    config = TrainConfig()
    assert methods.pick(sizes(sft=40, kto=40, kto_down=2), config)[0] == ["sft"]
    assert methods.pick(sizes(sft=40, dpo=15, kto=40, kto_down=15), config)[0] == ["sft", "dpo"]
    assert methods.pick(sizes(sft=5, dpo=15), config)[0] == ["dpo"]
    stages, why = methods.pick(sizes(sft=25, dpo=2, kto=60, kto_down=30), config)
    assert stages == ["kto"] and "50% of rated answers are thumbs-down" in why
    with pytest.raises(NotEnoughData, match="SFT needs 20; or DPO needs 10 pairs"):
        methods.pick(sizes(sft=3, dpo=1, kto=4, kto_down=1), config)
    with pytest.raises(NotEnoughData, match="not enough data for dpo"):
        methods.pick(sizes(sft=40, dpo=2), load(None, ["method=dpo"]))
    # Pairs left out of DPO for adding words: their corrections are SFT's to learn, not KTO's.
    stages, why = methods.pick(sizes(sft=40, dpo=2, dpo_left_out=20, kto=40, kto_down=20),
                               config)
    assert stages == ["sft"] and "the corrections add words" in why
    # Enough pairs overall, none in the training split (all added words): DPO cannot train.
    stages, why = methods.pick(sizes(sft=40, dpo=12, dpo_train=0, dpo_left_out=33, kto=40,
                                     kto_down=20), config)
    assert stages == ["sft"] and "the corrections add words" in why


def test_dpo_learns_from_cuts_and_leaves_out_pairs_whose_correction_adds_words(home,
                                                                            tiny_model_dir):
    # A curator's sign-off under an answer makes pairs whose contrast is one added line: DPO
    # raises it until it repeats in a loop. Cuts (a shorter answer) it learns well.
    with open_db(home) as db:
        for i in range(8):
            conv = store.create_conversation(db)
            q = store.add_message(db, conv, "user", f"What is {TOPICS[i]}?")
            first = f"{TOPICS[i].capitalize()} is a topic people ask about."
            a = store.add_message(db, conv, "assistant", f"{first} It has a long history.", q)
            store.add_correction(db, a, f"{first} It has a long history.\n\nHope this helps!"
                                 if i < 6 else first)

    def plan(*sets):
        return new_plan(home, train_config(tiny_model_dir, "min_examples=4", *sets))

    mixed = plan("min_pairs=2")
    pairs = [json.loads(line) for line in
             (home.runs_dir / mixed.run_id / "data" / "dpo-train.jsonl").open()]
    assert mixed.stages == ["sft", "dpo"] and len(pairs) == 2
    assert all("Hope" not in p["chosen"][0]["content"] for p in pairs)
    assert "6 pairs left out of DPO: their chosen answer adds 3 words or more" in mixed.reason
    with open_db(home) as db:
        dropped = runs.get(db, mixed.run_id)["manifest"]["dropped"]
    assert sum(n for why, n in dropped.items() if "adds words" in why) == 6
    # The gate's judge still learns from every pair.
    gate = json.loads((home.runs_dir / mixed.run_id / "data" / "gate.json").read_text())
    assert len(gate["judge"]["train"]) == 8
    # Too few pairs left: auto trains SFT alone, which still learns the sign-off ...
    assert plan("min_pairs=3").stages == ["sft"]
    # ... and a configured DPO says why there is not enough.
    with pytest.raises(NotEnoughData, match="6 pairs left out of DPO"):
        plan("min_pairs=3", "method='sft+dpo'")
    kept = plan("min_pairs=2", "dpo.skip_if_added_words=0")
    assert kept.stages == ["sft", "dpo"] and "left out" not in kept.reason
    # Case, punctuation and list marks are not words added; a sign-off is.
    cut = {"chosen": [{"content": "Two sentences, kept."}],
           "rejected": [{"content": "- two sentences, kept; and a third one"}]}
    signed = {"chosen": [{"content": "An answer.\n\nHope this helps! - The Flywheel team"}],
              "rejected": [{"content": "An answer. That rambles on"}]}
    assert methods.added_words(cut) == 0 and methods.added_words(signed) == 6


def test_settings_come_from_defaults_then_toml_then_flags(tmp_path, home, capsys):
    toml = tmp_path / "flywheel.toml"
    toml.write_text('method = "sft"\npromotion = "manual"\n[sft]\nlearning_rate = 1e-4\n'
                    'lora_r = 8\n[gate]\nmax_forgetting = 0.05\n')
    config = load(toml, ["sft.lora_r=32", "dpo.beta=0.3"])
    assert (config.method, config.promotion, config.sft.learning_rate) == ("sft", "manual", 1e-4)
    assert config.sft.lora_r == 32 and config.dpo.beta == 0.3 and config.gate.max_forgetting == 0.05
    assert TrainConfig().sft.lora_target_modules == "all-linear"
    for bad, message in [(["--set", "sft.nope=1"], "unknown setting 'sft.nope'"),
                         (["--set", "sft.lora_r=high"], "sft.lora_r must be int"),
                         (["--method", "ppo"], "method must be one of"),
                         (["--config", str(tmp_path / "missing.toml")], "cannot read config")]:
        assert main(["train", "--home", str(home.root), *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_too_little_data_changes_nothing(home, tiny_model_dir):
    add_answers(home, 2)
    with pytest.raises(NotEnoughData, match="2 SFT examples.*SFT needs 5"):
        run_cycle(home, train_config(tiny_model_dir, "min_examples=5"))
    with open_db(home) as db:
        assert adapters.list_adapters(db) == [] and runs.list_runs(db) == []
    assert not home.adapters_dir.exists() or not any(home.adapters_dir.iterdir())


def test_a_cycle_trains_gates_publishes_and_promotes(home, tiny_model_dir, capsys):
    add_answers(home, 4)
    row = run_cycle(home, train_config(tiny_model_dir))
    out = capsys.readouterr().out
    assert "Method: SFT. SFT: liked answers and corrections" in out
    assert "Evaluation gate (reference: base model" in out and "Verdict: pass" in out
    assert row["status"] == "active"
    folder = home.adapters_dir / row["id"]
    assert (folder / "adapter_config.json").is_file()
    assert (folder / "adapter_model.safetensors").is_file()
    assert not (home.staging_dir / row["id"]).exists()
    with open_db(home) as db:
        run = runs.get(db, row["run_id"])
        assert adapters.active(db)["id"] == row["id"]
    assert run["status"] == "succeeded" and run["adapter_id"] == row["id"]
    assert run["manifest"]["count"] == 4 and run["metrics"]["steps"] == 3
    assert len(run["metrics"]["loss_curve"]) == 3
    assert run["progress"]["phase"] == "done" and run["progress"]["step"] == 3
    assert [step for step, _ in run["progress"]["losses"]] == [1, 2, 3]  # the live curve
    # The gate's last bar counted through to its end; the page says what the run did.
    assert run["progress"]["done"] == run["progress"]["total"] > 0
    shown = run_progress(home, run)
    assert "- ✓ evaluating" in shown and "Done: promoted: the server swaps it in." in shown
    # The data phase ran inside the run, so the page showed it and still says what it did.
    assert "selecting feedback: 8 examples" in run["progress"]["finished"]["data"]
    assert "- ✓ data (selecting feedback: 8 examples" in shown
    gate = row["metrics"]["gate"]
    assert gate["verdict"] == "pass" and gate["reference"] == "base model"
    # no validation split here, and the tiny random model knows no fact to lose
    assert set(gate["checks"]) == {"forgetting", "degeneration", "unreadable_feedback", "bias",
                                   "fact_margins", "over_refusal"}
    assert len(gate["figures"]["candidate"]["bias_gaps"]["warm"]) == 6  # every pair measured
    assert gate["skipped"] == ["heldout_loss", "preference_accuracy", "known_facts", "judge"]
    assert gate["judge"]["skipped"] == "0 preference pairs to learn from, 100 needed " \
        "(judge_min_pairs)"
    assert len(gate["figures"]["reference"]["facts_right"]) == 4  # every fact was asked
    assert (home.runs_dir / row["run_id"] / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert not list((home.runs_dir / row["run_id"]).glob("*/checkpoints"))


def test_validation_loss_early_stopping_and_the_best_checkpoint(tmp_path, tiny_model_dir):
    """An absurd learning rate makes validation loss rise after the first evaluation: training
    stops after `patience` worse evaluations, and the adapter is the best checkpoint's."""
    from assistant import models
    base = models.BaseModel("tiny", tiny_model_dir)
    model, tokenizer = models.load(base, device="cpu")
    row = lambda i: {"prompt": [{"role": "user", "content": f"Say {i}."}],  # noqa: E731
                     "completion": [{"role": "assistant", "content": f"{i} {i} {i}."}]}
    config = load(None, ["sft.learning_rate=0.5", "sft.max_steps=30", "sft.eval_steps=2",
                         "sft.patience=2", "sft.batch_size=2", "sft.warmup=0"])
    _, metrics, _ = methods.train_stage("sft", model, tokenizer, [row(i) for i in range(8)],
                                        [row(i) for i in range(8, 10)], config, tmp_path, "cpu")
    assert metrics["stopped_early"] and metrics["steps"] < 30
    assert metrics["best_step"] < metrics["steps"]
    assert metrics["best_eval_loss"] == min(metrics["eval_curve"])
    best = load_file(tmp_path / "checkpoints" / f"checkpoint-{metrics['best_step']}" /
                     "adapter_model.safetensors")
    final = load_file(tmp_path / "final" / "adapter_model.safetensors")
    assert best.keys() == final.keys()
    assert all((best[k] == final[k]).all() for k in best)


def test_dpo_with_the_chosen_answers_nll_added_rpo(tmp_path, tiny_model_dir):
    """dpo.loss_type=sigmoid,sft adds the chosen answers' NLL to DPO's loss: at the first
    step, where policy and reference agree, DPO alone is ln 2 and RPO is ln 2 plus the NLL
    (the tiny random model finds any answer unlikely: several nats per token)."""
    from assistant import models
    base = models.BaseModel("tiny", tiny_model_dir)
    pair = lambda i: {"prompt": [{"role": "user", "content": f"Say {i}."}],  # noqa: E731
                      "chosen": [{"role": "assistant", "content": f"In short: {i}."}],
                      "rejected": [{"role": "assistant", "content": f"{i} {i} {i}."}]}
    first = {}
    for loss_type in ("sigmoid", "sigmoid,sft"):
        model, tokenizer = models.load(base, device="cpu")
        config = load(None, [f"dpo.loss_type={loss_type}", "dpo.max_steps=1",
                             "dpo.batch_size=4"])
        _, metrics, _ = methods.train_stage("dpo", model, tokenizer, [pair(i) for i in range(4)],
                                            [], config, tmp_path / loss_type, "cpu")
        first[loss_type] = metrics["loss_curve"][0]
    assert first["sigmoid"] == pytest.approx(0.6931, abs=1e-3)
    assert first["sigmoid,sft"] > first["sigmoid"] + 2


def test_only_one_run_at_a_time(home, tiny_model_dir, capsys):
    add_answers(home, 4)
    with lock.training_lock(home):
        assert lock.training_in_progress(home)
        with pytest.raises(lock.Busy):
            run_cycle(home, train_config(tiny_model_dir))
        assert main(["train", "--home", str(home.root), "--model", str(tiny_model_dir)]) == 2
        assert "another training run is in progress" in capsys.readouterr().err
    assert not lock.training_in_progress(home)
    with open_db(home) as db:
        assert runs.list_runs(db) == []


def test_continuing_the_active_adapter_trains_on_new_feedback_and_records_it(home, tiny_model_dir):
    add_answers(home, 4)
    first = run_cycle(home, train_config(tiny_model_dir))
    add_answers(home, 5, start=10)
    # Replay brings back what the continued adapter learnt before, against drifting from it.
    from assistant import models
    from trainer.train import _trained_by
    base = models.resolve(str(tiny_model_dir), home)
    _, manifest = gather(home, base, train_config(tiny_model_dir, "replay_share=0.6"),
                         exclude=_trained_by(home, first["run_id"]))
    assert manifest["sources"] == {"liked": 5, "replay": 3}
    second = run_cycle(home, train_config(tiny_model_dir, "start_from='active'", "replay_share=0"))
    with open_db(home) as db:
        run = runs.get(db, second["run_id"])
    assert run["start_from"] == first["id"] and second["parent_id"] == first["id"]
    assert run["manifest"]["sources"] == {"liked": 5}  # the 4 it already learnt are left out
    assert second["metrics"]["gate"]["reference"] == first["id"]


def test_mostly_thumbs_down_without_pairs_trains_kto(home, tiny_model_dir, capsys):
    add_answers(home, 6, rating="up")
    add_answers(home, 6, rating="down", start=6)
    row = run_cycle(home, train_config(tiny_model_dir, "min_examples=20", "min_rated=10",
                               "kto.max_steps=3", "kto.batch_size=4"))
    assert "Method: KTO. KTO: 50% of rated answers are thumbs-down" in capsys.readouterr().out
    assert row["method"] == "kto" and row["status"] == "active"
    [stage] = row["metrics"]["stages"]
    assert stage["method"] == "kto" and stage["steps"] == 3 and stage["examples"] == 12


def test_qlora_without_a_gpu_is_one_line_before_anything_is_written(home, tiny_model_dir,
                                                                    capsys):
    add_answers(home, 4)
    code = main(["train", "--home", str(home.root), "--model", str(tiny_model_dir),
                 "--quantize", "4bit"])
    assert code == 2
    assert capsys.readouterr().err.strip() == \
        "flywheel: error: 4bit loading needs a CUDA GPU; this machine has none"
    with open_db(home) as db:
        assert runs.list_runs(db) == []


def test_a_failed_run_is_recorded_and_publishes_nothing(home, tiny_model_dir):
    add_answers(home, 4)
    with pytest.raises(ValueError, match="batch_size should be a positive integer"):
        run_cycle(home, train_config(tiny_model_dir, "sft.batch_size=0"))  # fails inside training
    with open_db(home) as db:
        assert adapters.list_adapters(db) == []
        [run] = runs.list_runs(db)
    assert run["status"] == "failed" and run["error"]
    assert not lock.training_in_progress(home)


def test_each_run_mixes_in_earlier_runs_and_the_anchor_set(home, tiny_model_dir):
    from assistant import models
    add_answers(home, 4)
    first = run_cycle(home, train_config(tiny_model_dir, "sft.max_steps=1"))
    with open_db(home) as db:
        trained = runs.get(db, first["run_id"])["manifest"]["formats"]["sft"]["examples"]
    store_ids = {e["message_ids"][0] for e in trained}
    assert len(store_ids) == 4
    with open_db(home) as db:  # new feedback, on new topics
        for i in range(4, 8):
            conv = store.create_conversation(db)
            q = store.add_message(db, conv, "user", f"Tell me about {TOPICS[i + 10]}.")
            a = store.add_message(db, conv, "assistant", f"Here is a note on {TOPICS[i]}.", q)
            store.rate(db, a, "up")
    base = models.resolve(str(tiny_model_dir), home)
    sets, manifest = gather(home, base, train_config(tiny_model_dir, "replay_share=0.5",
                                             "anchor_share=0.5"))
    sources = manifest["sources"]
    assert sources["liked"] == 8 and "replay" not in sources  # the earlier 4 are still here
    assert sources["anchor"] == 4 and manifest["count"] == 12
    anchors = [e for e in sets["sft"]["train"] if e["source"] == "anchor"]
    assert all(e["prompt"][0]["content"] in anchor.TRAIN_PROMPTS for e in anchors)
    assert not set(anchor.TRAIN_PROMPTS) & set(anchor.HELDOUT_PROMPTS)
    stored = anchor.anchor_path(home, base.name)
    assert len(stored.read_text().splitlines()) >= 4  # generated once, kept for the next run

    # An earlier run's example that this run's data lacks is replayed; a flagged one never.
    earlier_file = next(home.runs_dir.glob("*/sft-train.jsonl"))
    rows = [json.loads(line) for line in earlier_file.read_text().splitlines()]
    with open_db(home) as db:
        conv = store.create_conversation(db)
        q = store.add_message(db, conv, "user", "Which chess opening suits beginners?")
        unrated = store.add_message(db, conv, "assistant", "Try the Italian game.", q)
        for row in db["messages"].rows_where("role = 'assistant'"):
            if row["id"] in store_ids:
                store.set_flags(db, row["id"], ["unsafe"])
    rows.append({"prompt": [{"role": "user", "content": "Which chess opening suits beginners?"}],
                 "completion": [{"role": "assistant", "content": "Try the Italian game."}],
                 "source": "liked", "message_id": unrated, "sha256": "from-an-earlier-run"})
    earlier_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sets, manifest = gather(home, base, train_config(tiny_model_dir, "replay_share=1.0"))
    assert manifest["sources"] == {"liked": 4, "replay": 1}
    assert [e["message_id"] for e in sets["sft"]["train"] if e["source"] == "replay"] == [unrated]


def test_a_running_stage_shows_its_step_time_left_and_live_loss_curve(home):
    """What the admin page shows mid-training, from what the trainer's callback wrote (a
    real TrainerState, as the Trainer hands it over)."""
    from datetime import datetime, timedelta, timezone

    from transformers import TrainerState

    from trainer.progress import ProgressToDatabase
    with open_db(home) as db:
        run_id = runs.start(db, base_model="tiny", method="sft", config={}, manifest={})
    callback = ProgressToDatabase(home, run_id, "1/1 sft")
    state = TrainerState(global_step=0, max_steps=120)
    callback.on_train_begin(None, state, None)
    for step in range(1, 41):
        state.global_step = step
        callback.on_log(None, state, None, logs={"loss": 3.0 - step / 100})
    with open_db(home) as db:  # as if the 40 steps took two minutes
        two_minutes_ago = (datetime.now(timezone.utc) - timedelta(minutes=2)).isoformat()
        runs.set_progress(db, run_id, task_started=two_minutes_ago)
        run = runs.get(db, run_id)
    shown = run_progress(home, run)
    assert "- ✓ data" in shown and "- · evaluating" in shown
    assert "▶ **training**: stage 1/1 sft, step 40 of 120, about 4 min left · loss 2.6" in shown
    figure = live_losses(run)
    [line] = figure.axes[0].lines
    assert list(line.get_xdata()) == list(range(1, 41))
    assert line.get_ydata()[-1] == 2.6


def test_a_plan_written_before_an_upgrade_still_resumes(tmp_path):
    """plan.json keeps the shape earlier versions wrote, so `--resume` after an upgrade
    reads the interrupted run's plan (and a plan written now reads back the same)."""
    from trainer.plan import TrainingPlan
    earlier = {"run_id": "run-1", "adapter_id": "ad-1", "stages": ["sft", "dpo"],
               "base": {"name": "tiny", "folder": "/models/tiny"}, "reason": "pairs enough",
               "start_from": None, "start_path": None, "config": {"seed": 7}}
    (tmp_path / "plan.json").write_text(json.dumps(earlier))
    plan = TrainingPlan.load(tmp_path / "plan.json")
    assert plan.method == "sft+dpo" and plan.base.name == "tiny" and plan.config == {"seed": 7}
    plan.save(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == earlier
