import json
from collections import Counter

import pytest

from storage import open_db
from storage import adapters, runs
from storage import chat as store
from trainer.dataset import example_hash
from trainer.selection import select
from trainer.anchor import TOPICS
from trainer.train import NotEnoughData, TrainConfig, run_cycle


def add_answers(home, n, rating="up"):
    ids = []
    with open_db(home) as db:
        for i in range(n):
            conv = store.create_conversation(db, system_prompt="Answer briefly.")
            q = store.add_message(db, conv, "user", f"Question {i}: what is {TOPICS[i]}?")
            a = store.add_message(db, conv, "assistant", f"Answer {i}: {TOPICS[-i - 1]}.", q)
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
        examples = select(db)["sft"]
    by_id = {e["message_ids"][0]: e for e in examples}
    assert set(by_id) == set(liked) | set(disliked)
    assert by_id[liked[1]]["prompt"] == [{"role": "system", "content": "Answer briefly."},
                                         {"role": "user", "content": f"Question 1: what is {TOPICS[1]}?"}]
    assert by_id[liked[1]]["completion"] == [{"role": "assistant", "content": f"Answer 1: {TOPICS[-2]}."}]
    assert by_id[liked[0]]["completion"][0]["content"] == "Corrected instead."
    assert by_id[disliked[0]]["source"] == "correction"
    assert Counter(e["source"] for e in examples) == {"liked": 1, "correction": 2}
    assert len({example_hash(e) for e in examples}) == 3


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
                                      batch_size=2, learning_rate=1e-2, validation_share=0.0,
                                      anchor_share=0.0))
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
                                    batch_size=0, validation_share=0.0,
                                    anchor_share=0.0))  # invalid: fails inside training
    with open_db(home) as db:
        assert adapters.list_adapters(db) == []
        [run] = runs.list_runs(db)
    assert run["status"] == "failed" and run["error"]


def test_each_run_mixes_in_earlier_runs_and_the_anchor_set(home, tiny_model_dir):
    from assistant import models
    from trainer import anchor
    from trainer.train import training_data
    add_answers(home, 4)
    first = run_cycle(home, TrainConfig(model=str(tiny_model_dir), min_examples=4, max_steps=1,
                                        batch_size=2, validation_share=0.0, anchor_share=0.0))
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
    examples, manifest = training_data(home, base, TrainConfig(
        model=str(tiny_model_dir), min_examples=4, validation_share=0.0, replay_share=0.5,
        anchor_share=0.5))
    sources = manifest["sources"]
    assert sources["liked"] == 8 and "replay" not in sources  # the earlier 4 are still here
    assert sources["anchor"] == 4 and manifest["count"] == 12
    anchors = [e for e in examples if e["source"] == "anchor"]
    assert all(e["prompt"][0]["content"] in anchor.PROMPTS for e in anchors)
    stored = anchor.anchor_path(home, base.name, len(anchor.PROMPTS))
    assert stored.is_file() and len(stored.read_text().splitlines()) == 300  # made once, kept

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
    examples, manifest = training_data(home, base, TrainConfig(
        model=str(tiny_model_dir), min_examples=4, validation_share=0.0, replay_share=1.0,
        anchor_share=0.0))
    assert manifest["sources"] == {"liked": 4, "replay": 1}
    assert [e["message_id"] for e in examples if e["source"] == "replay"] == [unrated]
