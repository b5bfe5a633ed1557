"""`flywheel serve --engine vllm` through the real pair of servers: vLLM's CPU build (in its
own venv, whose python FLYWHEEL_VLLM_PYTHON names; .ci/run installs it) serving the embedded
SmolLM2, and Flywheel in front of it, driven by the `openai` client and `gradio_client`.
One vLLM server for the whole module: it takes about a minute to start on two cores."""

import concurrent.futures
import os
import signal
import threading

import httpx
import openai
import pytest
import torch
from gradio_client import Client

from assistant import models, vllm_process
from assistant.server import ServeConfig, free_port, serve_in_thread
from storage import Home, adapters, open_db
from storage import chat as store
from tests.conftest import copy_model_cache, wait_for
from trainer.config import TrainConfig

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.vllm]

VLLM_PYTHON = os.environ.get("FLYWHEEL_VLLM_PYTHON")
if not VLLM_PYTHON:
    pytest.skip("FLYWHEEL_VLLM_PYTHON (the python of vLLM's venv) is not set; .ci/run sets it",
                allow_module_level=True)

PROMPTS = ["Name a fruit.", "What is a cat?", "Say something kind.", "Describe rain.",
           "Recommend a hobby.", "Give me a tip for sleeping well.", "What is 2 + 2?",
           "Name a colour."]


class Vllm:
    """The module's vLLM server; `kill` and `start` let a test take it away and back."""

    def __init__(self, base: models.BaseModel, log_path):
        self.base, self.log_path, self.port = base, log_path, free_port()
        self.process = None

    def start(self):
        self.process = vllm_process.start(
            VLLM_PYTHON, self.base.folder, self.base.name, self.port, self.log_path,
            dtype="float32", max_lora_rank=16, max_model_len=2048, cpu_kv_cache_gib=2,
            api_key=self.process.api_key if self.process else None)
        os.environ["VLLM_API_KEY"] = self.process.api_key  # what `--vllm-url` sends
        return self

    def kill(self):
        os.killpg(self.process.proc.pid, signal.SIGKILL)
        self.process.proc.wait()


@pytest.fixture(scope="module")
def vllm(embedded_cache, tmp_path_factory):
    base = models.resolve(None, Home.resolve(embedded_cache))
    server = Vllm(base, tmp_path_factory.mktemp("vllm") / "vllm.log").start()
    yield server
    server.process.stop()
    os.environ.pop("VLLM_API_KEY", None)


@pytest.fixture(scope="module")
def flywheel(vllm, embedded_cache, tmp_path_factory):
    home = Home.resolve(tmp_path_factory.mktemp("vllm-home") / "home")
    copy_model_cache(embedded_cache, home)
    config = ServeConfig(engine="vllm", vllm_url=vllm.process.url, port=0, poll_interval=0.2)
    with serve_in_thread(home, config) as (url, server):
        yield url, server, home


def api(url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)


def ask(url, prompt, model="flywheel", max_tokens=16):
    reply = api(url).chat.completions.create(
        model=model, temperature=0, max_tokens=max_tokens,
        messages=[{"role": "user", "content": prompt}])
    return reply.id, reply.model, reply.choices[0].message.content


def health(url) -> dict:
    return httpx.get(f"{url}/healthz", timeout=5).json()


def publish(home, base: models.BaseModel, adapter_id: str, seed: int) -> None:
    """A LoRA adapter with the trainer's default settings (rank, alpha, all linear layers),
    random but readable weights, published as `flywheel train` publishes one."""
    from peft import LoraConfig, get_peft_model
    settings = TrainConfig().sft
    model, _ = models.load(base)
    torch.manual_seed(seed)
    lora = get_peft_model(model, LoraConfig(
        r=settings.lora_r, lora_alpha=settings.lora_alpha,
        target_modules=settings.lora_target_modules, task_type="CAUSAL_LM",
        init_lora_weights=False))
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    lora.save_pretrained(adapters.staging_path(home, adapter_id))
    with open_db(home) as db:
        adapters.publish(db, home, adapter_id, base_model=base.name, method="sft")


def promote(home, adapter_id):
    with open_db(home) as db:
        adapters.promote(db, adapter_id, reason="test")


def rollback(home):
    with open_db(home) as db:
        adapters.rollback(db, reason="test")


def stored(home, message_id) -> dict:
    with open_db(home) as db:
        return store.get_message(db, message_id)


def test_the_prompt_vllm_sees_is_the_prompt_the_trainer_formats(vllm, flywheel):
    url, server, _ = flywheel
    tokenizer = server.engine.checks
    chats = [[{"role": "user", "content": "Name a fruit."}],
             [{"role": "system", "content": "Answer in French."},
              {"role": "user", "content": "Hello!"}],
             [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
              {"role": "user", "content": "Ünïcode, emoji 🍐 and\nnew lines"}]]
    for messages in chats:
        seen = httpx.post(f"{vllm.process.url}/tokenize", json={
            "model": vllm.base.name, "messages": messages, "add_generation_prompt": True},
            headers={"Authorization": f"Bearer {vllm.process.api_key}"}).json()["tokens"]
        assert seen == tokenizer.prompt_ids(messages)


def test_chat_streams_through_the_api_and_the_page_and_is_stored(flywheel):
    url, server, home = flywheel
    status = health(url)
    assert status["engine"] == "vllm" and status["adapter"] is None
    assert [r["state"] for r in status["replicas"]] == ["up"]

    chunks = list(api(url).chat.completions.create(
        model="flywheel", temperature=0, max_tokens=24, stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": PROMPTS[0]}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    answer = stored(home, chunks[0].id)
    assert text and answer["content"] == text and answer["adapter_id"] is None
    assert answer["finish_reason"] in ("stop", "length") and answer["latency_ms"] > 0
    assert chunks[-1].usage.completion_tokens == answer["completion_tokens"] > 0
    assert chunks[-1].usage.prompt_tokens == answer["prompt_tokens"] > 0
    _, _, plain = ask(url, PROMPTS[0], max_tokens=24)
    assert plain == text  # greedy: the same answer with or without streaming

    page = Client(url, verbose=False)
    page.predict(api_name="/new_conversation")
    history, _, last = page.predict(PROMPTS[0], "", 0.0, 24, api_name="/send")
    assert history[-1]["content"][0]["text"] == text
    assert stored(home, last["message_id"])["content"] == text


def test_stop_aborts_the_vllm_request_and_keeps_the_partial_answer(vllm, flywheel):
    url, _, home = flywheel
    stream = api(url).chat.completions.create(
        model="flywheel", temperature=0.8, max_tokens=1000, stream=True,
        messages=[{"role": "user", "content": "Tell me a very long story about a dragon."}])
    first = [next(stream) for _ in range(3)]
    stream.close()  # the client goes away
    answer = wait_for(lambda: (s := stored(home, first[0].id)) and s, 60, "the stored answer")
    assert answer["finish_reason"] == "interrupted" and 0 < answer["completion_tokens"] < 1000

    def running_in_vllm() -> float:
        metrics = httpx.get(f"{vllm.process.url}/metrics").text
        return sum(float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith("vllm:num_requests_running"))
    wait_for(lambda: running_in_vllm() == 0, 30, "vLLM to abort the request")
    assert health(url)["queued"] == 0


def test_pinning_and_eight_streams_through_a_promotion_and_a_rollback(vllm, flywheel):
    url, server, home = flywheel
    publish(home, vllm.base, "ad-vllm-a", seed=1)
    base_name = server.service.model_name
    pinned = {p: ask(url, p, "ad-vllm-a")[1:] for p in PROMPTS[:3]}
    base = {p: ask(url, p, base_name)[1:] for p in PROMPTS[:3]}
    assert all(pinned[p][0] == "ad-vllm-a" and base[p][0] == base_name for p in pinned)
    assert any(pinned[p][1] != base[p][1] for p in pinned)  # the adapter changes answers

    promoted, rolled_back = threading.Event(), threading.Event()

    def client(prompt):
        answers = []
        for round_ in range(5):
            if prompt == PROMPTS[0] and round_ == 1:
                promote(home, "ad-vllm-a")
                wait_for(lambda: health(url)["adapter"] == "ad-vllm-a", 60, "the promotion")
                promoted.set()
            if prompt == PROMPTS[0] and round_ == 3:
                rollback(home)
                wait_for(lambda: health(url)["adapter"] is None, 60, "the rollback")
                rolled_back.set()
            stream = api(url).chat.completions.create(
                model="flywheel", temperature=0, max_tokens=16, stream=True,
                messages=[{"role": "user", "content": prompt}])
            chunks = list(stream)
            answers.append((chunks[0].id, chunks[0].model,
                            "".join(c.choices[0].delta.content or "" for c in chunks
                                    if c.choices)))
        return answers

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(client, PROMPTS))
    assert promoted.is_set() and rolled_back.is_set()
    seen = []
    for answers in results:
        for answer_id, model, text in answers:
            row = stored(home, answer_id)
            assert row["finish_reason"] in ("stop", "length") and row["content"] == text
            assert model == (row["adapter_id"] or base_name)  # each answer names its version
            seen.append(row["adapter_id"])
    assert len(seen) == 40 and set(seen) == {None, "ad-vllm-a"}
    replica = health(url)["replicas"][0]
    assert "ad-vllm-a" in replica["adapters"]  # kept loaded: a rollback's way back is instant


def test_a_corrupt_adapter_is_refused_and_the_old_one_keeps_serving(vllm, flywheel):
    url, _, home = flywheel
    publish(home, vllm.base, "ad-vllm-good", seed=2)
    promote(home, "ad-vllm-good")
    wait_for(lambda: health(url)["adapter"] == "ad-vllm-good", 60, "the promotion")
    publish(home, vllm.base, "ad-vllm-corrupt", seed=3)
    (home.adapters_dir / "ad-vllm-corrupt" / "adapter_model.safetensors").write_bytes(b"junk")
    promote(home, "ad-vllm-corrupt")
    with open_db(home) as db:
        event = wait_for(lambda: next((e for e in adapters.events(db, "ad-vllm-corrupt").rows
                                       if e["event"] == "refused"), None), 60, "the refusal")
    assert "ad-vllm-corrupt" in event["detail"] or "vLLM" in event["detail"]
    assert health(url)["adapter"] == "ad-vllm-good"
    assert ask(url, PROMPTS[1])[1] == "ad-vllm-good"
    assert "ad-vllm-corrupt" not in health(url)["replicas"][0]["adapters"]


def test_adapters_pinned_one_after_another_never_pile_up_in_vllm(vllm, flywheel):
    """Each replica keeps at most max_loaded_adapters (2): the active one stays, the least
    recently used unused one goes, and an unloaded version is loaded again when asked for."""
    url, server, home = flywheel
    active = health(url)["adapter"]
    for adapter_id, seed in (("ad-vllm-c", 4), ("ad-vllm-d", 5)):
        publish(home, vllm.base, adapter_id, seed=seed)
        assert ask(url, PROMPTS[3], adapter_id)[1] == adapter_id
        loaded = health(url)["replicas"][0]["adapters"]
        assert active in loaded and adapter_id in loaded
        assert len(loaded) <= server.engine.max_loaded_adapters
    assert "ad-vllm-c" not in health(url)["replicas"][0]["adapters"]
    assert ask(url, PROMPTS[3], "ad-vllm-c")[1] == "ad-vllm-c"  # loaded again on demand
    assert ask(url, PROMPTS[3])[1] == active


def test_a_request_sent_during_a_swap_is_answered_by_the_new_adapter(vllm, flywheel):
    """As on the built-in engine, a swap goes ahead of requests for the default adapter: one
    sent while the new adapter is being loaded and smoke-tested waits, and the new one
    answers it (without the wait it went to the old one, beside the smoke test)."""
    url, server, home = flywheel
    before = health(url)["adapter"]
    publish(home, vllm.base, "ad-vllm-next", seed=6)
    promote(home, "ad-vllm-next")  # so the server's watcher keeps it, not `before`
    swap = server.engine.activate("ad-vllm-next", home.adapters_dir / "ad-vllm-next")
    _, model, _ = ask(url, PROMPTS[2])
    assert before != "ad-vllm-next" and model == "ad-vllm-next"
    assert swap.result(timeout=60) == "ad-vllm-next"


def test_vllm_killed_mid_stream_gives_503s_and_serving_resumes_when_it_is_back(vllm,
                                                                                flywheel):
    url, _, home = flywheel
    active = health(url)["adapter"]
    assert active is not None  # from the test before: the restart must bring it back
    stream = api(url).chat.completions.create(
        model="flywheel", temperature=0.8, max_tokens=1000, stream=True,
        messages=[{"role": "user", "content": "Tell me a very long story about a dragon."}])
    first = next(stream)
    vllm.kill()
    with pytest.raises(openai.APIError):
        for _ in stream:  # the stream ends with an error event, not a silent cut
            pass
    answer = wait_for(lambda: (s := stored(home, first.id)) and s, 60, "the kept answer")
    assert answer["finish_reason"] == "interrupted"

    with pytest.raises(openai.APIStatusError) as refused:
        ask(url, PROMPTS[2])
    assert refused.value.status_code == 503
    assert refused.value.body["code"] == "engine_unavailable"
    assert health(url)["replicas"][0]["state"] == "down"

    vllm.start()  # the same port: what an orchestrator restarting it would do
    wait_for(lambda: health(url)["replicas"][0]["state"] == "up", 120, "the replica back")
    assert active in health(url)["replicas"][0]["adapters"]
    _, model, text = ask(url, PROMPTS[2])
    assert model == active and text
