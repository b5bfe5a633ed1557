"""The whole loop through real processes: serve, chat in the page, like, train, hot swap."""

import subprocess

import openai
import pytest
from gradio_client import Client

from storage import chat as store
from storage import open_db
from tests.conftest import OUTPUT, flywheel, health, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PROBE = "Name a fruit."
TRAIN_PROMPTS = [PROBE, "Give me a tip for sleeping well.", "What is a cat?",
                 "Say something kind.", "Describe rain in one sentence.", "Recommend a hobby."]
CORRECTION = "A mango: sweet, juicy and golden inside."


def ask(client: Client, prompt: str, temperature: float, max_tokens: int = 32) -> tuple[str, dict]:
    client.predict(api_name="/new_conversation")
    history, _, last = client.predict(prompt, "", temperature, max_tokens, api_name="/send")
    return history[-1]["content"][0]["text"], last


def test_feedback_trains_an_adapter_that_the_running_server_swaps_in(serve_process):
    url, home = serve_process
    client = Client(url, verbose=False)
    assert health(url)["adapter"] is None

    base_text, base_last = ask(client, PROBE, temperature=0.0)
    assert base_text and base_last["adapter_id"] is None

    # A night's feedback as people give it: complete answers liked, and a curator's correction
    # of the probe's answer. Greedy answers make the night the same on every run: sampled
    # ones (temperature 1.0, cut off at 32 tokens) made the gate's verdict a coin toss.
    for prompt in TRAIN_PROMPTS[1:]:
        _, last = ask(client, prompt, temperature=0.0, max_tokens=96)
        assert client.predict(last["message_id"], "up", api_name="/rate") == "ok"
    _, last = ask(client, PROBE, temperature=0.0, max_tokens=96)
    assert client.predict(last["message_id"], None, CORRECTION, [],
                          api_name="/save_review") == "Saved."

    train = subprocess.run(flywheel("train", "--home", str(home.root), "--min-examples", "6",
                                    "--max-steps", "8", "--batch-size", "2",
                                    "--learning-rate", "1e-3", "--validation-share", "0",
                                    "--anchor-share", "0", "--set", "gate.anchor_examples=16",
                                    "--set", "gate.generation_prompts=8"),
                           capture_output=True, text=True, timeout=900)
    (OUTPUT / "e2e-train.log").write_text(train.stdout + train.stderr)
    assert train.returncode == 0, train.stderr[-2000:]
    assert "Verdict: pass" in train.stdout and "promoted: the server swaps it in" in train.stdout, \
        train.stdout[train.stdout.find("Evaluation gate"):]
    with open_db(home) as db:
        adapter_id = db.execute("SELECT id FROM adapters WHERE status = 'active'").fetchone()[0]

    wait_for(lambda: health(url)["adapter"] == adapter_id, 120, "the hot swap")
    new_text, new_last = ask(client, PROBE, temperature=0.0)
    with open_db(home) as db:
        stored = store.get_message(db, new_last["message_id"])
    assert stored["adapter_id"] == adapter_id == new_last["adapter_id"]
    assert new_text != base_text
    print(f"\nbase model: {base_text!r}\nadapter {adapter_id}: {new_text!r}")

    # The API serves the same versions: "flywheel" is the new adapter, the base is pinnable.
    api = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    asked = dict(messages=[{"role": "user", "content": PROBE}], temperature=0, max_tokens=32)
    active = api.chat.completions.create(model="flywheel", **asked)
    pinned = api.chat.completions.create(model=health(url)["model"], **asked)
    assert active.model == adapter_id and active.choices[0].message.content == new_text
    assert pinned.model == health(url)["model"] and pinned.choices[0].message.content == base_text

    # A request in flight keeps its adapter while the server swaps back (rollback).
    long_job = Client(url, verbose=False).submit("Tell me a long story about a dragon.", "", 0.7,
                                                 160, api_name="/send")
    wait_for(lambda: long_job.status().code.name in ("ITERATING", "PROCESSING"), 30, "the job")
    rollback = subprocess.run(flywheel("adapters", "rollback", "--home", str(home.root)),
                              capture_output=True, text=True, timeout=120)
    assert rollback.returncode == 0 and "the base model is now active" in rollback.stdout
    _, _, in_flight = long_job.result(timeout=300)
    assert in_flight["adapter_id"] == adapter_id
    assert in_flight["finish_reason"] in ("stop", "length")
    wait_for(lambda: health(url)["adapter"] is None, 120, "the swap back")
    after_text, after_last = ask(client, PROBE, temperature=0.0)
    assert after_last["adapter_id"] is None and after_text == base_text
