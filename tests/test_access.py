"""Who can do what: sign-in, sessions, roles and ownership, through the page's own API
(`gradio_client`) and plain HTTP, on a real server with auth on."""

import time

import httpx
import pytest
from gradio_client import Client

from assistant.server import ServeConfig, ServeError, build, serve_in_thread
from storage import chat as store
from storage import open_db, users

PASSWORD = "correct horse battery"


def add(home, name, role):
    with open_db(home) as db:
        users.add_user(db, name, role, password=PASSWORD)
        key, _ = users.create_key(db, name)
    return key


@pytest.fixture
def server(home, tiny_model_dir):
    keys = {name: add(home, name, role) for name, role in
            (("alice", "user"), ("bob", "user"), ("carol", "curator"), ("dave", "admin"))}
    config = ServeConfig(model=str(tiny_model_dir), port=0, poll_interval=0.1)
    with serve_in_thread(home, config) as (url, srv):
        yield url, home, keys


def as_user(url, key) -> Client:
    return Client(url, verbose=False, headers={"Authorization": f"Bearer {key}"})


def denied(call, match):
    with pytest.raises(Exception, match=match):
        call()


def call_unlisted(url, key, endpoint, args) -> str:
    """Call a page endpoint through Gradio's HTTP API directly, as an attacker would:
    gradio_client only calls what the caller's listing shows. Returns the event stream."""
    headers = {"Authorization": f"Bearer {key}"}
    started = httpx.post(f"{url}/gradio_api/call{endpoint}", json={"data": list(args)},
                         headers=headers)
    started.raise_for_status()
    return httpx.get(f"{url}/gradio_api/call{endpoint}/{started.json()['event_id']}",
                     headers=headers, timeout=60).text


def test_signed_out_visitors_are_sent_to_sign_in_and_get_nothing(server):
    url, _, _ = server
    page = httpx.get(url, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login"
    assert httpx.get(f"{url}/config").status_code == 401
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert httpx.get(f"{url}/healthz").status_code == 200  # for load balancers


def test_sign_in_gives_a_session_that_times_out_and_ends_on_sign_out(server, home,
                                                                    tiny_model_dir):
    url, _, _ = server
    wrong = httpx.post(f"{url}/login", data={"username": "alice", "password": "nope"})
    assert wrong.status_code == 303 and "error=" in wrong.headers["location"]
    with httpx.Client(base_url=url) as browser:
        signed = browser.post("/login", data={"username": "alice", "password": PASSWORD})
        assert signed.status_code == 303 and signed.headers["location"] == "/"
        assert browser.get("/").status_code == 200
        assert browser.get("/v1/models").status_code == 200  # the page's cookie works there too
        browser.get("/logout")  # what a link or an image on another page would do
        assert browser.get("/", follow_redirects=False).status_code == 200  # still signed in
        browser.post("/logout")
        assert browser.get("/", follow_redirects=False).status_code == 303
    with open_db(home) as db:  # an expired session is refused
        token = users.start_session(db, db["users"].count, hours=-1)
    assert httpx.get(url, cookies={"flywheel_session": token}).status_code == 303


def test_each_role_is_shown_only_the_page_endpoints_it_may_call(server):
    url, _, keys = server
    shown = {name: set(as_user(url, keys[name]).view_api(print_info=False, return_format="dict")
                       ["named_endpoints"]) for name in ("alice", "carol", "dave")}
    assert {"/send", "/rate"} <= shown["alice"]
    assert not shown["alice"] & {"/save_review", "/pick", "/add_user", "/promote"}
    assert {"/send", "/save_review", "/pick"} <= shown["carol"]
    assert not shown["carol"] & {"/add_user", "/promote", "/reset_password"}
    assert {"/send", "/save_review", "/add_user", "/promote"} <= shown["dave"]
    everything = httpx.get(f"{url}/gradio_api/info?all_endpoints=true",
                           headers={"Authorization": f"Bearer {keys['alice']}"}).json()
    assert "/send" in everything["named_endpoints"]
    assert not set(everything["named_endpoints"]) & {"/save_review", "/add_user", "/train_now"}
    assert everything["unnamed_endpoints"] == {}  # the page's private events are not listed
    assert httpx.get(f"{url}/gradio_api/info").status_code == 401  # signed out: nothing


def test_users_see_and_rate_only_their_own_conversations(server):
    url, home, keys = server
    alice, bob = as_user(url, keys["alice"]), as_user(url, keys["bob"])
    _, _, last = alice.predict("hello", "", 0.0, 16, api_name="/send")
    conversation, answer = last["conversation_id"], last["message_id"]
    history = alice.predict(conversation, api_name="/open_conversation")
    assert history[0] == {"role": "user", "content": "hello"}
    denied(lambda: bob.predict(conversation, api_name="/open_conversation"), "No such conversation")
    denied(lambda: bob.predict(answer, "down", [], "", api_name="/rate"), "No such message")
    assert alice.predict(answer, "down", ["too long"], "meh", api_name="/rate") == "ok"
    with open_db(home) as db:
        [rating] = db["ratings"].rows_where("message_id = ?", [answer])
        assert rating["rater_id"] == users.get_user(db, "alice")["id"]
        assert store.get_conversation(db, conversation)["user_id"] == rating["rater_id"]


@pytest.mark.parametrize("endpoint, args, role", [
    ("/review_queue", ("any", "any", "", "any"), "curator"),
    ("/save_review", ("chatcmpl-x", 5, "better", []), "curator"),
    ("/compare", ("hi", "flywheel", "tiny-model0"), "curator"),
    ("/pick", ("msg-x", "chatcmpl-a", "chatcmpl-b", "a", "", ""), "curator"),
    ("/promote", ("ad-x",), "admin"),
    ("/rollback", (), "admin"),
    ("/train_now", (), "admin"),
    ("/start_ab", ("ad-x", 0.2), "admin"),
    ("/stop_ab", (), "admin"),
    ("/adapter_report", ("ad-x",), "admin"),
    ("/add_user", ("mallory", "admin", "password123"), "admin"),
    ("/reset_password", ("dave", "password123"), "admin"),
    ("/disable_user", ("dave",), "admin"),
])
def test_curator_and_admin_actions_are_refused_to_lower_roles(server, endpoint, args, role):
    url, home, keys = server
    callers = ["alice"] + (["carol"] if role == "admin" else [])
    for name in callers:
        answer = call_unlisted(url, keys[name], endpoint, args)
        assert "event: error" in answer and f"needs the {role} role" in answer, answer
    with open_db(home) as db:
        assert users.get_user(db, "mallory") is None
        assert users.check_password(db, "dave", PASSWORD) is not None
        assert db["adapters"].count == 0 and db["corrections"].count == 0
        assert db["ab_tests"].count == 0


def test_a_curator_reviews_and_an_admin_manages_users(server):
    url, home, keys = server
    _, _, last = as_user(url, keys["alice"]).predict("hi", "", 0.0, 16, api_name="/send")
    carol = as_user(url, keys["carol"])
    table, count = carol.predict("any", "any", "", "no", api_name="/review_queue")
    assert count == "1 answers" and table["data"][0][2] == "no"
    assert carol.predict(last["message_id"], 2, "Hello! How can I help?", ["pii"],
                         api_name="/save_review") == "Saved."
    with open_db(home) as db:
        assert store.corrections(db)[0]["correction"] == "Hello! How can I help?"
        assert store.flags(db, last["message_id"]) == ["pii"]
    table, count = carol.predict("any", "any", "", "no", api_name="/review_queue")
    assert count == "0 answers"  # reviewed now

    dave = as_user(url, keys["dave"])
    people, note = dave.predict("erin", "curator", "password123", api_name="/add_user")
    assert ["erin", "curator"] == people["data"][-1][:2]
    dave.predict("alice", api_name="/disable_user")
    denied(lambda: as_user(url, keys["alice"]).predict(api_name="/new_conversation"),
           "credentials were not provided")  # a disabled user cannot even load the page
    assert httpx.get(f"{url}/v1/models",
                     headers={"Authorization": f"Bearer {keys['alice']}"}).status_code == 401


def test_off_loopback_the_server_refuses_to_start_without_an_admin(tmp_path, tiny_model_dir):
    from storage import Home, init_db
    home = Home.resolve(tmp_path / "open")
    init_db(home)
    with pytest.raises(ServeError, match="without an admin account"):
        build(home, ServeConfig(model=str(tiny_model_dir), host="0.0.0.0"))


def test_loopback_with_no_users_is_the_local_admin(home, tiny_model_dir):
    config = ServeConfig(model=str(tiny_model_dir), port=0)
    with serve_in_thread(home, config) as (url, _):
        assert httpx.get(url).status_code == 200
        client = Client(url, verbose=False)
        table, count = client.predict("any", "any", "", "any", api_name="/review_queue")
        assert count == "0 answers"


def test_a_curator_compares_two_versions_and_picks_one(server, tiny_model_dir):
    url, home, keys = server
    from storage import adapters
    from tests.conftest import make_adapter
    make_adapter(tiny_model_dir, adapters.staging_path(home, "ad-cmp"), seed=1)
    with open_db(home) as db:
        adapters.publish(db, home, "ad-cmp", base_model="tiny-model0", method="sft")
    carol = as_user(url, keys["carol"])
    both = carol.predict("hello", "tiny-model0", "ad-cmp", api_name="/compare")
    assert both["text_a"] != both["text_b"]
    assert carol.predict(both["prompt_id"], both["answer_a"], both["answer_b"], "b",
                         api_name="/pick") == "Saved: B is better."
    with open_db(home) as db:
        [pick] = db["comparisons"].rows
        a, b = store.get_message(db, pick["answer_a"]), store.get_message(db, pick["answer_b"])
    assert pick["winner"] == "b" and a["adapter_id"] is None and b["adapter_id"] == "ad-cmp"
    assert a["parent_id"] == b["parent_id"] == pick["prompt_id"]
    denied(lambda: carol.predict(both["prompt_id"], both["answer_a"], "chatcmpl-other", "a",
                                 api_name="/pick"), "must answer that prompt")


@pytest.mark.slow
def test_an_admin_starts_training_in_its_own_process_and_sees_its_progress(server):
    url, home, keys = server
    dave = as_user(url, keys["dave"])
    assert dave.predict(api_name="/train_now") == "Training started."
    progress = ""
    deadline = time.monotonic() + 120
    while "finished" not in progress and time.monotonic() < deadline:
        progress = dave.predict(api_name="/training_progress")
        time.sleep(0.5)
    assert "Training started here finished (exit 0)" in progress
    assert "not enough training data" in progress  # nobody has rated anything yet
    assert "it/s" not in progress and "{" not in progress  # no raw bars, no dicts


def test_an_admin_reads_a_gate_report_and_runs_an_ab_split(server, tiny_model_dir):
    url, home, keys = server
    from storage import ab, adapters
    from tests.conftest import make_adapter
    make_adapter(tiny_model_dir, adapters.staging_path(home, "ad-gated"), seed=1)
    gate = {"verdict": "pass", "reference": "base model", "reason": "passed: forgetting +1.0%",
            "skipped": [], "checks": {"forgetting": {"candidate": 0.01, "reference": 0.0,
                                                     "limit": 0.15, "passed": True, "n": 48,
                                                     "unit": "anchor prompts"}}}
    with open_db(home) as db:
        adapters.publish(db, home, "ad-gated", base_model="tiny-model0", method="sft",
                         metrics={"gate": gate})
    dave = as_user(url, keys["dave"])
    report, plot = dave.predict("ad-gated", api_name="/adapter_report")
    assert "gate **pass** against base model" in report and "| forgetting | 0.01 |" in report
    assert dave.predict("ad-gated", 0.25, api_name="/start_ab") == \
        "A/B split: 25% of new conversations go to ad-gated."
    with open_db(home) as db:
        assert ab.current(db)["candidate_id"] == "ad-gated"
    assert dave.predict(api_name="/stop_ab") == "A/B split for ad-gated stopped."
    denied(lambda: dave.predict("ad-nope", 0.25, api_name="/start_ab"), "no adapter ad-nope")
