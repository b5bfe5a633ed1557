"""The page in a real browser: Debian's headless chromium, driven by Playwright, against a
real server on the embedded SmolLM2. Screenshots land in test-output/."""

import re
import time
from pathlib import Path

import httpx
import openai
import pytest
from playwright.sync_api import expect

from assistant.server import ServeConfig, serve_in_thread
from storage import Home, adapters, open_db, users
from storage import chat as store
from tests.conftest import OUTPUT, copy_model_cache, make_adapter, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PASSWORD = "correct horse battery"
# `browser` (one chromium per module) comes from tests/fixtures_browser.py.


def start(tmp_path_factory, embedded_cache, name):
    home = Home.resolve(tmp_path_factory.mktemp(name))
    copy_model_cache(embedded_cache, home)
    return home


@pytest.fixture(scope="module")
def local_server(tmp_path_factory, embedded_cache):
    """A fresh local install: no users, so the page opens as the local admin."""
    home = start(tmp_path_factory, embedded_cache, "local")
    with serve_in_thread(home, ServeConfig(port=0, poll_interval=0.2)) as (url, server):
        yield url, server, home


@pytest.fixture(scope="module")
def team_server(tmp_path_factory, embedded_cache):
    """A server with accounts: a user with an API key, a curator and an admin."""
    home = start(tmp_path_factory, embedded_cache, "team")
    from storage import init_db
    init_db(home)
    with open_db(home) as db:
        for name, role in (("carol", "curator"), ("dave", "admin")):
            users.add_user(db, name, role, password=PASSWORD)
        key, _ = users.create_key(db, "alice")
    with serve_in_thread(home, ServeConfig(port=0, poll_interval=0.2)) as (url, server):
        yield url, server, home, key


def answers(home) -> list[dict]:
    with open_db(home) as db:
        return list(db["messages"].rows_where("role = 'assistant'", order_by="rowid"))


def letters(text: str) -> str:
    """Letters and digits only: the page renders answers as Markdown (line breaks, emphasis)."""
    return re.sub(r"[^0-9A-Za-z]", "", text)


def shows(page, content: str, selector="#chatbot [data-testid='bot']") -> None:
    """The last message matching `selector` shows `content` (waits for the page to update)."""
    wait_for(lambda: page.locator(selector).count()
             and letters(page.locator(selector).last.inner_text()) == letters(content),
             15, f"the page to show {content[:40]!r}")


def last_bot_text(page) -> str:
    bots = page.locator("#chatbot [data-testid='bot']")
    return bots.last.inner_text() if bots.count() else ""


def sign_in(browser, url, name):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(url)
    expect(page).to_have_url(f"{url}/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#message textarea", timeout=60_000)
    expect(page.locator("#who")).to_contain_text(name)
    return page


def test_chat_streams_regenerates_switches_siblings_rates_and_stops(browser, local_server):
    url, server, home = local_server
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(url)
    page.fill("#message textarea", "Write a short poem about the sea.")
    page.click("#send")
    lengths = []  # the answer as the page shows it, sampled while it streams
    while not answers(home):
        lengths.append(len(last_bot_text(page)))
        time.sleep(0.1)
    grown = sorted(set(n for n in lengths if n > 0))
    assert len(grown) >= 3, f"the answer did not stream: {lengths}"
    first = answers(home)[0]
    shows(page, first["content"])
    page.screenshot(path=OUTPUT / "browser-chat.png", full_page=True)

    # Regenerate: a second answer beside the first; the page moves between the two.
    page.click("#regenerate")
    wait_for(lambda: len(answers(home)) == 2, 120, "the regenerated answer")
    second = answers(home)[1]
    assert second["parent_id"] == first["parent_id"] and second["id"] != first["id"]
    shows(page, second["content"])
    page.locator("#chatbot [data-testid='bot']").last.click()
    expect(page.locator("#selected")).to_contain_text("Selected answer 2 of 2")
    page.click("#prev-sibling")
    expect(page.locator("#selected")).to_contain_text("Selected answer 1 of 2")
    shows(page, first["content"])

    # Rate the selected (first) answer with a reason and a comment.
    page.get_by_text("Rate or edit the selected message").click()
    page.locator("#thumb").get_by_text("👎").click()
    expect(page.locator("#reasons")).not_to_contain_text("accurate")  # the 👎 reasons only
    page.locator("#reasons").get_by_text("too long").click()
    page.fill("#comment textarea", "Shorter, please.")
    page.click("#save-rating")
    expect(page.locator("#rating-status")).to_contain_text("Saved")
    with open_db(home) as db:
        [rating] = db["ratings"].rows_where("message_id = ?", [first["id"]])
    assert rating["rating"] == "down" and rating["reasons"] == '["too long"]'
    assert rating["comment"] == "Shorter, please."

    # Edit the question: a new branch beside the old one, nothing overwritten.
    page.locator("#chatbot [data-testid='user']").first.click()
    expect(page.locator("#selected")).to_contain_text("Selected message 1 of 1")
    page.fill("#edit-box textarea", "Write a short poem about the moon.")
    page.click("#edit-send")
    wait_for(lambda: len(answers(home)) == 3, 120, "the answer to the edited message")
    with open_db(home) as db:
        questions = list(db["messages"].rows_where("role = 'user'", order_by="rowid"))
    assert [q["content"] for q in questions] == ["Write a short poem about the sea.",
                                                 "Write a short poem about the moon."]
    assert questions[0]["parent_id"] is None and questions[1]["parent_id"] is None
    shows(page, answers(home)[2]["content"])

    # Stop a long answer mid-way: the partial answer is stored, marked interrupted.
    page.fill("#message textarea", "Tell me a very long story about a dragon and a knight.")
    page.click("#send")
    wait_for(lambda: len(last_bot_text(page)) > 40 and len(answers(home)) == 3, 120,
             "the long answer to start streaming")
    page.click("#stop")
    stopped = wait_for(lambda: len(answers(home)) == 4 and answers(home)[3], 120,
                       "the stopped answer")
    assert stopped["finish_reason"] == "interrupted" and stopped["completion_tokens"] < 256
    shows(page, stopped["content"])
    page.close()


def test_a_curator_corrects_an_answer(browser, team_server):
    url, server, home, key = team_server
    api = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    reply = api.chat.completions.create(model="flywheel", temperature=0, max_tokens=40,
                                        messages=[{"role": "user", "content": "What is 2+2?"}])
    httpx.post(f"{url}/v1/feedback", headers={"Authorization": f"Bearer {key}"},
               json={"id": reply.id, "rating": "down", "reason": "wrong"})
    page = sign_in(browser, url, "carol")
    page.get_by_role("tab", name="Curate").click()
    page.click("#load-queue")
    expect(page.locator("#queue-count")).to_contain_text("1 answers")
    page.locator("#queue [data-testid='cell-0-5']").click()  # the first answer's text
    expect(page.locator("#review-chat [data-testid='user']").first).to_contain_text("2+2")
    page.locator("#score").get_by_text("2", exact=True).click()
    page.fill("#correction textarea", "2 + 2 = 4.")
    page.click("#save-review")
    expect(page.locator("#review-status")).to_contain_text("Saved")
    page.screenshot(path=OUTPUT / "browser-curate.png", full_page=True)
    with open_db(home) as db:
        [correction] = store.corrections(db)
        assert correction["correction"] == "2 + 2 = 4."
        assert store.get_message(db, reply.id)["content"] == reply.choices[0].message.content
        scores = [r["score"] for r in db["ratings"].rows_where("score IS NOT NULL")]
    assert scores == [2]
    page.close()


def test_an_admin_promotes_and_rolls_back(browser, team_server):
    url, server, home, _ = team_server
    adapter_id = "ad-browser-1"
    make_adapter(_base_folder(server),
                 adapters.staging_path(home, adapter_id), seed=0)
    with open_db(home) as db:
        adapters.publish(db, home, adapter_id, base_model=server.service.model_name,
                         method="sft", metrics={"gate": GATE})
    page = sign_in(browser, url, "dave")
    page.get_by_role("tab", name="Admin").click()
    page.click("#refresh-adapters")
    expect(page.locator("#adapters")).to_contain_text(adapter_id)
    page.locator("#adapter-pick input").click()
    page.get_by_role("option", name=adapter_id).click()
    expect(page.locator("#gate-report")).to_contain_text("gate pass against base model")
    expect(page.locator("#gate-report")).to_contain_text("forgetting")
    page.click("#promote")
    expect(page.locator("#admin-status")).to_contain_text(f"{adapter_id} is now active")
    wait_for(lambda: httpx.get(f"{url}/healthz").json()["adapter"] == adapter_id, 120,
             "the swap")
    page.click("#refresh-adapters")
    expect(page.locator("#serving")).to_contain_text(adapter_id)
    page.screenshot(path=OUTPUT / "browser-admin.png", full_page=True)
    page.click("#rollback")
    expect(page.locator("#admin-status")).to_contain_text("Rolled back: the base model is active")
    wait_for(lambda: httpx.get(f"{url}/healthz").json()["adapter"] is None, 120,
             "the swap back")
    page.close()


GATE = {"verdict": "pass", "reference": "base model", "reason": "passed: forgetting +2.0%",
        "skipped": [], "checks": {"forgetting": {"candidate": 0.02, "reference": 0.0,
                                                 "limit": 0.15, "passed": True, "n": 48,
                                                 "unit": "anchor prompts"}}}


def _base_folder(server) -> Path:
    return Path(server.engine.model.config._name_or_path)
