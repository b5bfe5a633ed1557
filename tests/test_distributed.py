"""The same trainer under `accelerate launch` on several processes: two CPU processes with the
gloo backend train one adapter, which the server then loads and serves."""

import subprocess
import sys

import openai
import pytest

from assistant.server import ServeConfig, free_port, serve_in_thread
from storage import adapters, open_db, runs
from tests.conftest import add_answers

pytestmark = pytest.mark.slow  # subprocess training or a real server


def test_two_gloo_processes_train_one_adapter_that_loads_and_serves(home, tiny_model_dir):
    add_answers(home, 12)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
              "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m",
              "flywheel.cli", "train", "--home", str(home.root), "--model", str(tiny_model_dir),
              "--set", "validation_share=0.25", "--set", "anchor_share=0",
              "--set", "min_examples=8", "--set", "sft.max_steps=6", "--set", "sft.batch_size=2",
              "--set", "sft.eval_steps=3", "--set", "sft.learning_rate=1e-2",
              "--set", "gate.anchor_examples=4", "--set", "gate.generation_prompts=2",
              "--set", "gate.max_new_tokens=8",
              "--set", "gate.max_unreadable_feedback=1"]  # random weights: all text unreadable
    done = subprocess.run(launch, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("Method: SFT") == 1  # the main process alone prepares and reports
    with open_db(home) as db:
        [run] = runs.list_runs(db)
        row = adapters.get(db, run["adapter_id"])
    [stage] = run["metrics"]["stages"]
    assert (stage["processes"], stage["backend"], stage["steps"]) == (2, "gloo", 6)
    assert row["status"] == "active" and row["metrics"]["gate"]["verdict"] == "pass"

    with serve_in_thread(home, ServeConfig(model=str(tiny_model_dir), port=0)) as (url, server):
        assert server.engine.active_adapter == row["id"]
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        asked = dict(messages=[{"role": "user", "content": "Question 1: what is gravity?"}],
                     temperature=0, max_tokens=12)
        trained = client.chat.completions.create(model="flywheel", **asked)
        bare = client.chat.completions.create(model="tiny-model0", **asked)
    assert trained.model == row["id"] and bare.model == "tiny-model0"
    assert trained.choices[0].message.content != bare.choices[0].message.content
