"""The browser the page tests drive and the page's own helpers (a pytest plugin, registered
by conftest.py's `pytest_plugins`): Debian's headless chromium through Playwright, and one real
server on the tiny model per test module that asks for `page_server`."""

from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from assistant.inference import GenerationParams
from assistant.server import ServeConfig, serve_in_thread
from assistant.throttle import ThrottleConfig
from storage import Home, init_db, open_db
from tests.conftest import OUTPUT, wait_for

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "a long admin password"  # the page tests' accounts'


@pytest.fixture(scope="module")
def browser():
    """One chromium per test module."""
    if not Path(CHROMIUM).exists():
        pytest.fail("the browser tests need Debian's chromium: apt-get install chromium")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page_server(tmp_path_factory, tiny_model_dir):
    """A fresh local install on the tiny model, one per test module (its tests run in file
    order against it): no users, the page opens as the local admin; (url, server, home)."""
    home = Home.resolve(tmp_path_factory.mktemp("page"))
    init_db(home)
    # A low rate for signed-in users (the local owner is never limited): the Retry test.
    config = ServeConfig(model=str(tiny_model_dir), port=0, poll_interval=0.2,
                         throttle=ThrottleConfig(requests_per_minute=2))
    with serve_in_thread(home, config) as (url, srv):
        yield url, srv, home


def open_page(browser, url, width=1280, height=1000):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url)
    page.wait_for_selector("#message textarea", timeout=60_000)
    return page


def submit_sign_in(page, name: str, password: str = PASSWORD) -> None:
    """Fill and send the /login form the page is on."""
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def signed_in_page(browser, url, name: str):
    """A new page, signed in as `name` (whose password is PASSWORD), with the chat loaded."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(f"{url}/login")
    submit_sign_in(page, name)
    page.wait_for_selector("#message textarea")
    return page


def set_slider(page, elem_id: str, value: str) -> None:
    """Type a value into a Settings slider's number box (the change lands on leaving it),
    until the slider shows it: on a busy machine a value typed while the Settings section is
    still mounting can be lost."""
    box = page.locator(f"#{elem_id} input[type=number]")
    for attempt in range(5):
        box.fill(value)
        box.press("Tab")
        try:
            expect(page.locator(f"#{elem_id} input[type=range]")).to_have_value(value,
                                                                              timeout=4_000)
            return
        except AssertionError:
            if attempt == 4:
                raise


def answers(home) -> list[dict]:
    with open_db(home) as db:
        return list(db["messages"].rows_where("role = 'assistant'", order_by="rowid"))


def ratings(home) -> list[dict]:
    with open_db(home) as db:
        return list(db["ratings"].rows_where(order_by="id"))


def answer_to(home, act, what: str = "the answer to be stored") -> dict:
    """Do `act` (a click, a key) and wait until the answer it asked for is stored."""
    before = len(answers(home))
    act()
    return wait_for(lambda: len(answers(home)) > before and answers(home)[-1], 60, what)


def send(page, home, text: str) -> dict:
    page.fill("#message textarea", text)
    answer = answer_to(home, lambda: page.click("#send"))
    expect(page.locator("#send")).to_be_enabled()  # the page has shown the stored answer
    return answer


def short_answers(page) -> None:
    """Settings: answers of 16 tokens at most (what they say does not matter here)."""
    page.get_by_text("Settings").click()
    set_slider(page, "max-tokens", "16")


def no_error_badges(page) -> None:
    """Nothing on the page wears Gradio's red "Error" badge (it covers what it sits on)."""
    assert page.locator(".error", has_text="Error").filter(visible=True).count() == 0


def answered(srv, text: str, user_id=None) -> str:
    """An answer stored through the chat service (as the page or the API would)."""
    turn = srv.service.reply(None, None, text, GenerationParams(max_tokens=24),
                             user_id=user_id)
    "".join(turn)
    return turn.id
