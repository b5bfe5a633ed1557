"""The OpenAI-compatible API through the official `openai` client against a real server."""

import json
import sqlite3
import time

import httpx
import openai
import pytest

from flywheel.cli import main
from storage import adapters, open_db
from storage import chat as store
from tests.conftest import client, make_adapter

GREEDY = dict(temperature=0, max_tokens=8)
HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]


def stored_counts(home) -> tuple[int, int]:
    with open_db(home) as db:
        return db["conversations"].count, db["messages"].count


def test_chat_completion_is_stored_under_its_id_with_usage(api_server):
    url, srv, home = api_server
    reply = client(url).chat.completions.create(model="flywheel", messages=HELLO, **GREEDY)
    text = reply.choices[0].message.content
    with open_db(home) as db:
        answer = store.get_message(db, reply.id)
        conversation = db["conversations"].get(answer["conversation_id"])
        assert store.history(db, answer["parent_id"]) == HELLO
    assert reply.id.startswith("chatcmpl-") and reply.object == "chat.completion"
    assert text and answer["content"] == text and answer["role"] == "assistant"
    assert conversation["system_prompt"] == "Be brief."
    assert reply.usage.completion_tokens == answer["completion_tokens"] == 8
    assert reply.usage.prompt_tokens == answer["prompt_tokens"] > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 8
    assert reply.choices[0].finish_reason == "length" and reply.model == srv.service.model_name
    assert json.loads(answer["params"])["max_tokens"] == 8


def test_streamed_chunks_add_up_to_the_stored_answer(api_server):
    url, _, home = api_server
    chunks = list(client(url).chat.completions.create(
        model="flywheel", messages=HELLO, stream=True, stream_options={"include_usage": True},
        **GREEDY))
    ids = {c.id for c in chunks}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(ids) == 1 and len(chunks) >= 4  # role, pieces, finish, usage
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 8 and chunks[-1].choices == []
    with open_db(home) as db:
        assert store.get_message(db, ids.pop())["content"] == text
    raw = httpx.post(f"{url}/v1/chat/completions", timeout=30, json={
        "model": "flywheel", "messages": HELLO, "stream": True, **GREEDY})
    lines = [line for line in raw.text.splitlines() if line]
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_models_lists_servable_versions_and_a_version_can_be_pinned(api_server, tiny_model_dir):
    url, srv, home = api_server
    base = srv.service.model_name
    for adapter_id, status in (("ad-a", "candidate"), ("ad-no", "rejected")):
        make_adapter(tiny_model_dir, adapters.staging_path(home, adapter_id), seed=1)
        with open_db(home) as db:
            adapters.publish(db, home, adapter_id, base_model=base, method="sft")
            db["adapters"].update(adapter_id, {"status": status})
    names = [m.id for m in client(url).models.list()]
    assert names == ["flywheel", base, "ad-a"]
    pinned = client(url).chat.completions.create(model="ad-a", messages=HELLO, **GREEDY)
    plain = client(url).chat.completions.create(model=base, messages=HELLO, **GREEDY)
    active = client(url).chat.completions.create(model="flywheel", messages=HELLO, **GREEDY)
    assert pinned.model == "ad-a" and plain.model == active.model == base
    assert pinned.choices[0].message.content != plain.choices[0].message.content
    assert plain.choices[0].message.content == active.choices[0].message.content
    with open_db(home) as db:
        assert store.get_message(db, pinned.id)["adapter_id"] == "ad-a"
        assert store.get_message(db, plain.id)["adapter_id"] is None
    with pytest.raises(openai.NotFoundError) as info:
        client(url).chat.completions.create(model="ad-no", messages=HELLO, **GREEDY)
    assert info.value.code == "model_not_found"


@pytest.mark.parametrize("change, error, param", [
    ({"messages": []}, openai.BadRequestError, "messages"),
    ({"messages": [{"role": "user"}]}, openai.BadRequestError, "messages.0.content"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, openai.BadRequestError, "messages.0.role"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, openai.BadRequestError, "messages"),
    ({"temperature": "hot"}, openai.BadRequestError, "temperature"),
    ({"temperature": 5}, openai.BadRequestError, "temperature"),
    ({"max_tokens": 401}, openai.BadRequestError, "max_tokens"),
    ({"max_tokens": 0}, openai.BadRequestError, "max_tokens"),
    ({"n": 2}, openai.BadRequestError, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, openai.BadRequestError, "stop"),
    ({"messages": [{"role": "user", "content": "x" * 600}]}, openai.BadRequestError, "messages"),
    ({"model": "gpt-4o"}, openai.NotFoundError, "model"),
])
def test_malformed_requests_raise_the_clients_own_errors_and_store_nothing(api_server, change,
                                                                           error, param):
    url, _, home = api_server
    before = stored_counts(home)
    request = {"model": "flywheel", "messages": HELLO, "max_tokens": 8, **change}
    with pytest.raises(error) as info:
        client(url).chat.completions.create(**request)
    assert info.value.body["param"] == param and info.value.body["message"]
    assert stored_counts(home) == before


def test_bad_json_and_unknown_routes_get_openai_shaped_errors(api_server):
    url, _, home = api_server
    before = stored_counts(home)
    bad = httpx.post(f"{url}/v1/chat/completions", content=b"{not json",
                     headers={"content-type": "application/json"})
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"
    assert "not valid JSON" in bad.json()["error"]["message"]
    missing = httpx.get(f"{url}/v1/nothing-here")
    assert missing.status_code == 404 and "error" in missing.json()
    too_long = httpx.post(f"{url}/v1/chat/completions", json={
        "model": "flywheel", "messages": [{"role": "user", "content": "x" * 600}]})
    assert too_long.status_code == 400
    assert too_long.json()["error"]["code"] == "context_length_exceeded"
    assert stored_counts(home) == before


def test_feedback_is_stored_like_the_pages(api_server):
    url, _, home = api_server
    reply = client(url).chat.completions.create(model="flywheel", messages=HELLO, **GREEDY)
    sent = httpx.post(f"{url}/v1/feedback", json={
        "id": reply.id, "rating": "down", "reason": ["wrong", "too long"],
        "comment": "not a greeting", "correction": "Hello!"})
    assert sent.status_code == 200, sent.text
    with open_db(home) as db:
        [rating] = db["ratings"].rows_where("message_id = ?", [reply.id])
        [correction] = store.corrections(db)
        assert store.get_message(db, reply.id)["content"] == reply.choices[0].message.content
    assert rating["rating"] == "down" and json.loads(rating["reasons"]) == ["wrong", "too long"]
    assert rating["comment"] == "not a greeting"
    assert correction["id"] == reply.id and correction["correction"] == "Hello!"
    httpx.post(f"{url}/v1/feedback", json={"id": reply.id, "rating": "up"})
    with open_db(home) as db:
        assert [r["rating"] for r in store.latest_ratings(db)] == ["up"]  # the latest counts

    for body, status in (({"id": reply.id, "rating": "meh"}, 400),
                         ({"id": reply.id}, 400),
                         ({"id": reply.id, "rating": "up", "correction": "  "}, 400),
                         ({"id": "chatcmpl-nope", "rating": "up"}, 404)):
        response = httpx.post(f"{url}/v1/feedback", json=body)
        assert response.status_code == status and response.json()["error"]["message"]
    with open_db(home) as db:
        assert db["ratings"].count == 2 and db["corrections"].count == 1


def test_api_keys_turn_auth_on_and_scope_feedback_to_the_owner(api_server, capsys):
    url, _, home = api_server
    assert client(url).models.list()  # no users yet: the local owner, no key needed
    assert main(["keys", "create", "alice", "--home", str(home.root)]) == 0
    alice = capsys.readouterr().out.strip()
    assert main(["keys", "create", "bob", "--home", str(home.root)]) == 0
    bob = capsys.readouterr().out.strip()
    with sqlite3.connect(home.db_path) as raw:
        assert alice not in "".join(row[0] for row in raw.execute("SELECT key_hash FROM api_keys"))

    for key in ("unused", alice[:-1] + "x"):
        with pytest.raises(openai.AuthenticationError):
            client(url, key).chat.completions.create(model="flywheel", messages=HELLO, **GREEDY)
    assert httpx.get(f"{url}/v1/models").status_code == 401
    reply = client(url, alice).chat.completions.create(model="flywheel", messages=HELLO, **GREEDY)
    with open_db(home) as db:
        answer = store.get_message(db, reply.id)
        owner = db["conversations"].get(answer["conversation_id"])["user_id"]
        assert db["users"].get(owner)["name"] == "alice"
    as_bob = httpx.post(f"{url}/v1/feedback", json={"id": reply.id, "rating": "down"},
                        headers={"Authorization": f"Bearer {bob}"})
    as_alice = httpx.post(f"{url}/v1/feedback", json={"id": reply.id, "rating": "up"},
                          headers={"Authorization": f"Bearer {alice}"})
    assert as_bob.status_code == 404 and as_alice.status_code == 200

    assert main(["keys", "revoke", "1", "--home", str(home.root)]) == 0
    with pytest.raises(openai.AuthenticationError):
        client(url, alice).models.list()
    assert main(["keys", "revoke", "1", "--home", str(home.root)]) == 2


def test_a_client_that_disconnects_stops_the_model_and_the_partial_answer_is_kept(api_server):
    url, srv, home = api_server
    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=30, json={
            "model": "flywheel", "messages": HELLO, "max_tokens": 400, "stream": True}) as r:
        first = next(line for line in r.iter_lines() if line.startswith("data: "))
    answer_id = json.loads(first[len("data: "):])["id"]
    deadline = time.monotonic() + 20
    stored = None
    while stored is None and time.monotonic() < deadline:
        with open_db(home) as db:
            stored = store.get_message(db, answer_id)
        time.sleep(0.05)
    assert stored is not None
    assert stored["finish_reason"] == "interrupted" and stored["completion_tokens"] < 400
