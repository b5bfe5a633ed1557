"""The chat page's own API (what the browser calls), through gradio_client on a real server."""

import time

import pytest
from gradio_client import Client

from assistant.server import ServeConfig, serve_in_thread
from storage import chat as store
from storage import open_db
from tests.conftest import wait_for


@pytest.fixture
def server(home, tiny_model_dir):
    config = ServeConfig(model=str(tiny_model_dir), port=0, poll_interval=0.1)
    with serve_in_thread(home, config) as (url, srv):
        yield url, srv, home


def test_stop_ends_the_answer_and_keeps_it_marked_interrupted(server):
    url, srv, home = server
    client = Client(url, verbose=False)
    started = len(srv.engine.batches_run)
    job = client.submit("hello", "", 0.0, 400, api_name="/send")
    deadline = time.monotonic() + 10
    while len(srv.engine.batches_run) == started and time.monotonic() < deadline:
        time.sleep(0.01)  # until the model is generating this answer
    history, last = client.predict(api_name="/stop")
    with open_db(home) as db:
        stored = store.get_message(db, last["message_id"])
    assert stored["finish_reason"] == last["finish_reason"] == "interrupted"
    assert stored["completion_tokens"] < 400
    assert history[-2]["content"][0]["text"] == "hello"

    # The next message continues the same conversation after the stopped answer.
    job.cancel()
    history, _, after = client.predict("again", "", 0.0, 16, api_name="/send")
    with open_db(home) as db:
        follow_up = store.get_message(db, after["message_id"])
        question = store.get_message(db, follow_up["parent_id"])
    assert question["parent_id"] == last["message_id"]
    assert follow_up["conversation_id"] == stored["conversation_id"]


def test_too_long_input_is_a_message_in_the_page_and_nothing_is_stored(server):
    url, _, home = server
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="too long"):
        client.predict("x" * 600, "", 0.0, 64, api_name="/send")
    with open_db(home) as db:
        assert db["messages"].count == 0 and db["conversations"].count == 0


def test_two_people_on_the_page_are_answered_together(server):
    """Gradio runs each page event for one caller at a time unless told otherwise: the
    second person's answer would wait for the whole first one. Both must share a batch."""
    url, srv, _ = server
    first, second = Client(url, verbose=False), Client(url, verbose=False)
    before = len(srv.engine.batches_run)
    # "hello" at temperature 0 runs the full 400 tokens on the tiny model (the Stop test).
    job = first.submit("hello", "", 0.0, 400, api_name="/send")
    wait_for(lambda: len(srv.engine.batches_run) > before, 30, "the first answer to start")
    other = second.submit("hello there", "", 0.0, 16, api_name="/send")
    wait_for(lambda: other.done() or job.done(), 60, "an answer to finish", every=0.02)
    assert not job.done()  # the second answer finished while the first was still going
    assert max(list(srv.engine.batches_run)[before:]) == 2  # decoded in one batch
    other.result()
    job.cancel()
