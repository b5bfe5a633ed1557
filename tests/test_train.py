import pytest

from storage import open_db
from storage import adapters, runs
from storage import chat as store
from trainer.dataset import build_sft, manifest
from trainer.train import NotEnoughData, TrainConfig, run_cycle


def add_answers(home, n, rating="up"):
    ids = []
    with open_db(home) as db:
        for i in range(n):
            conv = store.create_conversation(db, system_prompt="Answer briefly.")
            q = store.add_message(db, conv, "user", f"Question {i}?")
            a = store.add_message(db, conv, "assistant", f"Answer {i}.", q)
            if rating:
                store.rate(db, a, rating)
            ids.append(a)
    return ids


def test_sft_dataset_takes_liked_answers_and_corrections_with_the_whole_prompt(home):
    liked = add_answers(home, 2)
    disliked = add_answers(home, 1, rating="down")
    with open_db(home) as db:
        store.add_correction(db, disliked[0], "A better answer.")
        store.add_correction(db, liked[0], "Corrected instead.")  # the correction wins
        examples = build_sft(db)
    by_id = {e["message_id"]: e for e in examples}
    assert set(by_id) == set(liked) | set(disliked)
    assert by_id[liked[1]]["prompt"] == [{"role": "system", "content": "Answer briefly."},
                                         {"role": "user", "content": "Question 1?"}]
    assert by_id[liked[1]]["completion"] == [{"role": "assistant", "content": "Answer 1."}]
    assert by_id[liked[0]]["completion"][0]["content"] == "Corrected instead."
    assert by_id[disliked[0]]["source"] == "correction"
    assert manifest(examples)["sources"] == {"liked": 1, "correction": 2}
    assert len({e["sha256"] for e in manifest(examples)["examples"]}) == 3


def test_too_little_data_changes_nothing(home, tiny_model_dir):
    add_answers(home, 2)
    with pytest.raises(NotEnoughData, match="2 SFT examples.*need at least 5"):
        run_cycle(home, TrainConfig(model=str(tiny_model_dir), min_examples=5))
    with open_db(home) as db:
        assert adapters.list_adapters(db) == [] and runs.list_runs(db) == []
    assert not home.adapters_dir.exists() or not any(home.adapters_dir.iterdir())


def test_a_cycle_trains_publishes_records_and_promotes_an_adapter(home, tiny_model_dir):
    add_answers(home, 4)
    row = run_cycle(home, TrainConfig(model=str(tiny_model_dir), min_examples=4, max_steps=3,
                                      batch_size=2, learning_rate=1e-2))
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


def test_a_failed_run_is_recorded_and_publishes_nothing(home, tiny_model_dir):
    add_answers(home, 4)
    with pytest.raises(Exception):
        run_cycle(home, TrainConfig(model=str(tiny_model_dir), min_examples=4, max_steps=2,
                                    batch_size=0))  # invalid: fails inside training
    with open_db(home) as db:
        assert adapters.list_adapters(db) == []
        [run] = runs.list_runs(db)
    assert run["status"] == "failed" and run["error"]
