"""Two nights on the embedded SmolLM2 with a real `flywheel serve` running: a cycle on good
feedback passes the gate and is swapped in; a night of gibberish rated up is refused before
training and the server keeps serving the adapter it had."""

import random
import subprocess
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from bench.learning_traits import gibberish
from storage import adapters, open_db, runs
from tests.conftest import OUTPUT, flywheel, health, wait_for

# A real training run with the whole gate on SmolLM2: about 480 s on two cores since the gate
# reads fact margins and over-refusal too (CI on 5413939: train 215 s, gate 257 s), then the
# refused night's data and screen, so the whole test is over the suite's 900 s default.
pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(1800)]

PROMPTS = [
    "Name a fruit.", "Give me a tip for sleeping well.", "What is a cat?", "Say something kind.",
    "Describe rain in one sentence.", "Recommend a hobby.", "What is the capital of France?",
    "How do plants grow?", "Why is the sky blue?", "What is a good breakfast?",
    "How can I stay focused?", "What is music?", "Describe the ocean.", "What do bees make?",
    "How do I make tea?", "What is a computer?", "Name a planet.", "What is friendship?",
    "Why do we sleep?", "What is a river?", "How do birds fly?", "What is a library?",
    "Give me a reason to exercise.", "What is snow?",
]
# A quick cycle: few steps, a small gate sample. Everything else is the default.
QUICK = ["--max-steps", "10", "--batch-size", "4", "--set", "gate.anchor_examples=24",
         "--set", "gate.generation_prompts=8"]


def train(home, night: str, *args: str) -> str:
    done = subprocess.run(flywheel("train", "--home", str(home.root), *QUICK, *args),
                          capture_output=True, text=True, timeout=1500)
    log = done.stdout + done.stderr
    (OUTPUT / f"cycle-{night}-train.log").write_text(log)
    assert done.returncode == 0, log[-3000:]
    print(done.stdout[max(done.stdout.find("Evaluation gate"), 0):][-3000:])
    return done.stdout


def test_a_good_night_is_promoted_and_a_poisoned_night_is_rejected(serve_process):
    url, home = serve_process
    api = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)

    def chat(prompt: str, temperature: float, max_tokens: int = 192):
        return api.chat.completions.create(model="flywheel", max_tokens=max_tokens,
                                           temperature=temperature,
                                           messages=[{"role": "user", "content": prompt}])

    def feedback(answer_id: str, **body):
        api.post("/feedback", cast_to=object, body={"id": answer_id, **body})

    # Night 1: the model's own answers; the curator likes those that are complete.
    with ThreadPoolExecutor(8) as pool:  # eight users at once: the server batches them
        replies = list(pool.map(lambda p: chat(p, temperature=0.3), PROMPTS))
    for reply in replies:
        feedback(reply.id, rating="up" if reply.choices[0].finish_reason == "stop" else "down")
    out = train(home, "good")
    assert "Verdict: pass" in out and "promoted" in out
    with open_db(home) as db:
        good = adapters.active(db)
    assert good["metrics"]["gate"]["verdict"] == "pass"
    wait_for(lambda: health(url)["adapter"] == good["id"], 120, "the swap to the good adapter")
    served = chat(PROMPTS[0], temperature=0)
    assert served.model == good["id"]

    # Night 2: gibberish "corrections" rated up.
    rng = random.Random(0)
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: chat(PROMPTS[i % len(PROMPTS)] + f" ({i})",
                                               temperature=0.7, max_tokens=16), range(40)))
    for reply in replies:
        feedback(reply.id, rating="up", correction=gibberish(rng))
    out = train(home, "poisoned")
    # Held-out loss could not see it (the held-out answers are gibberish too); the base model
    # can: most answers the run would train towards are unreadable to it, so the night is
    # refused before any training and no adapter is made.
    assert "Refused before training:" in out and "unreadable to the base model" in out
    assert "Trained in" not in out and "Evaluation gate" not in out
    with open_db(home) as db:
        assert [a["id"] for a in adapters.list_adapters(db)] == [good["id"]]
        assert adapters.active(db)["id"] == good["id"]
        refused = runs.latest(db)
    assert refused["adapter_id"] is None
    assert refused["progress"]["decision"].startswith("refused before training: ")
    assert health(url)["adapter"] == good["id"]
    again = chat(PROMPTS[0], temperature=0)
    assert again.model == good["id"]
    assert again.choices[0].message.content == served.choices[0].message.content
