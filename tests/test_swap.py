"""Hot swap under load, and a broken adapter that must never reach users, on a real server."""

import concurrent.futures
import threading

import httpx
import openai
import pytest

from assistant.server import ServeConfig, serve_in_thread
from storage import adapters, open_db
from storage import chat as store
from tests.conftest import make_adapter, wait_for

PROMPTS = [f"question {i}: " + "why " * i for i in range(8)]


@pytest.fixture
def server(home, tiny_model_dir):
    config = ServeConfig(model=str(tiny_model_dir), port=0, poll_interval=0.1, max_batch_size=4)
    with serve_in_thread(home, config) as (url, srv):
        yield url, srv, home


def publish(home, tiny_model_dir, adapter_id, seed, base_model):
    make_adapter(tiny_model_dir, adapters.staging_path(home, adapter_id), seed=seed)
    with open_db(home) as db:
        adapters.publish(db, home, adapter_id, base_model=base_model, method="sft")


def ask(url, prompt, model="flywheel"):
    api = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
    reply = api.chat.completions.create(model=model, temperature=0, max_tokens=24,
                                        messages=[{"role": "user", "content": prompt}])
    return reply.id, reply.model, reply.choices[0].message.content


def test_eight_clients_chat_through_a_promotion(server, tiny_model_dir):
    url, srv, home = server
    base = srv.service.model_name
    publish(home, tiny_model_dir, "ad-new", seed=3, base_model=base)
    # What each prompt gets from each version, asked for by name.
    expected = {(p, None): ask(url, p, base)[2] for p in PROMPTS}
    expected |= {(p, "ad-new"): ask(url, p, "ad-new")[2] for p in PROMPTS}
    assert all(expected[p, None] != expected[p, "ad-new"] for p in PROMPTS)

    promoted = threading.Event()

    def client(prompt):
        answers = []
        for round_ in range(6):
            if round_ == 2 and prompt == PROMPTS[0]:
                with open_db(home) as db:
                    adapters.promote(db, "ad-new", reason="test")
                promoted.set()
            answers.append(ask(url, prompt))
        return answers

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = dict(zip(PROMPTS, pool.map(client, PROMPTS)))
    assert promoted.is_set()
    seen = set()
    with open_db(home) as db:
        for prompt, answers in results.items():
            for answer_id, model, text in answers:
                stored = store.get_message(db, answer_id)
                adapter = stored["adapter_id"]
                seen.add(adapter)
                assert model == (adapter or base)  # the response names who answered
                assert text == stored["content"] == expected[prompt, adapter]
            # Once a client has been answered by the new adapter, it never goes back.
            order = [store.get_message(db, a)["adapter_id"] for a, _, _ in answers]
            assert order == sorted(order, key=lambda a: a is not None)
    assert seen == {None, "ad-new"}
    assert httpx.get(f"{url}/healthz").json()["adapter"] == "ad-new"
    assert max(srv.engine.batches_run) > 1  # concurrent requests shared decoding steps


def test_a_broken_or_foreign_adapter_is_refused_and_the_old_one_keeps_serving(server,
                                                                              tiny_model_dir):
    url, srv, home = server
    base = srv.service.model_name
    publish(home, tiny_model_dir, "ad-good", seed=1, base_model=base)
    with open_db(home) as db:
        adapters.promote(db, "ad-good")
    wait_for(lambda: httpx.get(f"{url}/healthz").json()["adapter"] == "ad-good")
    good_text = ask(url, PROMPTS[1])[2]

    publish(home, tiny_model_dir, "ad-corrupt", seed=2, base_model=base)
    (home.adapters_dir / "ad-corrupt" / "adapter_model.safetensors").write_bytes(b"garbage")
    publish(home, tiny_model_dir, "ad-foreign", seed=2, base_model="some-other-model")
    publish(home, tiny_model_dir, "ad-empty", seed=2, base_model=base)
    (home.adapters_dir / "ad-empty" / "adapter_config.json").unlink()

    for bad, reason in (("ad-corrupt", "Error"), ("ad-foreign", "some-other-model"),
                        ("ad-empty", "no adapter_config.json")):
        with open_db(home) as db:
            adapters.promote(db, bad)
        wait_for(lambda: any(e["event"] == "refused" for e in _events(home, bad)))
        [event] = _events(home, bad)
        assert reason in event["detail"]
        assert httpx.get(f"{url}/healthz").json()["adapter"] == "ad-good"
        answer_id, model, text = ask(url, PROMPTS[1])
        assert model == "ad-good" and text == good_text
        names = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
        assert bad not in names and "ad-good" in names


def _events(home, adapter_id):
    with open_db(home) as db:
        return adapters.events(db, adapter_id).rows


def test_a_request_right_after_a_promotion_is_answered_by_the_promoted_adapter(home,
                                                                               tiny_model_dir):
    # The poll is an hour apart here: only the request itself can notice the promotion.
    config = ServeConfig(model=str(tiny_model_dir), port=0, poll_interval=3600)
    with serve_in_thread(home, config) as (url, srv):
        base = srv.service.model_name
        publish(home, tiny_model_dir, "ad-new", seed=3, base_model=base)
        publish(home, tiny_model_dir, "ad-corrupt", seed=2, base_model=base)
        (home.adapters_dir / "ad-corrupt" / "adapter_model.safetensors").write_bytes(b"junk")
        pinned = ask(url, PROMPTS[2], "ad-new")[2]
        assert ask(url, PROMPTS[2])[1] == base

        with open_db(home) as db:
            adapters.promote(db, "ad-new")
        assert ask(url, PROMPTS[2])[1:] == ("ad-new", pinned)

        with open_db(home) as db:  # a broken one is refused once; the old one answers
            adapters.promote(db, "ad-corrupt")
        assert [ask(url, PROMPTS[2])[1] for _ in range(3)] == ["ad-new"] * 3
        assert [e["event"] for e in _events(home, "ad-corrupt")] == ["refused"]

        with open_db(home) as db:  # back past ad-new to the base model, as quickly
            assert adapters.rollback(db)["id"] == "ad-new"
            assert adapters.rollback(db) is None
        assert ask(url, PROMPTS[2])[1] == base


def test_a_server_shutting_down_swaps_nothing_and_blames_no_adapter(server, tiny_model_dir):
    # Past the watcher's stop the engine may be closing: a swap it refused for that would be
    # recorded against a good adapter, and a restarted server would never serve it.
    url, srv, home = server
    publish(home, tiny_model_dir, "ad-late", seed=3, base_model=srv.service.model_name)
    srv.watcher.stop()
    with open_db(home) as db:
        adapters.promote(db, "ad-late")
    srv.engine.close()
    srv.watcher.catch_up("ad-late")  # a request that arrived just then
    assert srv.engine.active_adapter is None and _events(home, "ad-late") == []
