"""The page's defects found by hand in chromium, each driven the way a person found it:
Debian's headless chromium through Playwright, against one real server on the tiny model
(the answers are noise, which is all these tests need). The tests run in file order: the
last ones add the first account from the page, which turns sign-in on."""

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect
from transformers import TrainerState

from assistant.inference import GenerationParams
from assistant.server import ServeConfig, free_port, serve_in_thread
from assistant.throttle import ThrottleConfig
from storage import Home, activity, adapters, init_db, lock, open_db, review, runs, users
from storage import chat as store
from storage.retention import prune
from tests.conftest import wait_for
from tests.test_browser import OUTPUT, browser  # noqa: F401  (the module's chromium)
from trainer import selection
from trainer.progress import PhaseBar, ProgressToDatabase, report_to, stop_reporting

pytestmark = [pytest.mark.slow, pytest.mark.integration]
# Playwright waits 5 s by default; on two shared cores a server round trip can take longer.
expect.set_options(timeout=20_000)

PASSWORD = "a long admin password"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    """A fresh local install on the tiny model: no users, the page opens as the local admin."""
    home = Home.resolve(tmp_path_factory.mktemp("page"))
    init_db(home)
    # A low rate for signed-in users (the local owner is never limited): the Retry test.
    config = ServeConfig(model=str(tiny_model_dir), port=0, poll_interval=0.2,
                         throttle=ThrottleConfig(requests_per_minute=2))
    with serve_in_thread(home, config) as (url, srv):
        yield url, srv, home


def open_page(browser, url, width=1280, height=1000):  # noqa: F811
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url)
    page.wait_for_selector("#message textarea", timeout=60_000)
    return page


def submit_sign_in(page, name: str, password: str = PASSWORD) -> None:
    """Fill and send the /login form the page is on."""
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def signed_in_page(browser, url, name: str):  # noqa: F811
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


def test_a_rating_form_never_carries_over_to_another_answer(browser, server):  # noqa: F811
    url, _, home = server
    page = open_page(browser, url)
    first = send(page, home, "first question")
    page.get_by_text("Rate or edit the selected message").click()
    page.locator("#thumb").get_by_text("👎").click()
    expect(page.locator("#reasons")).not_to_contain_text("accurate")  # the 👎 reasons only
    page.locator("#reasons").get_by_text("wrong", exact=True).click()
    page.fill("#comment textarea", "not what I asked")

    # A new chat and a new answer: the form is empty again, and saving it refuses.
    page.click("#new-chat")
    expect(page.locator("#comment textarea")).to_have_value("")
    second = send(page, home, "second question")
    expect(page.locator("#thumb input:checked")).to_have_count(0)
    expect(page.locator("#reasons input:checked")).to_have_count(0)
    expect(page.locator("#comment textarea")).to_have_value("")
    page.click("#save-rating")
    expect(page.locator("#rating-status")).to_contain_text("Choose 👍 or 👎 first")
    assert ratings(home) == []

    # What the person does give lands on the answer in view, and shows on the message.
    page.locator("#thumb").get_by_text("👍").click()
    page.click("#save-rating")
    expect(page.locator("#rating-status")).to_contain_text("Saved")
    [rating] = ratings(home)
    assert (rating["message_id"], rating["rating"], rating["comment"]) == (second["id"], "up",
                                                                          None)
    assert first["id"] != second["id"]
    expect(page.locator("#chatbot button[aria-label='Liked']")).to_have_count(1)
    expect(page.locator("#chatbot button[aria-label='Clear']")).to_be_hidden()  # did nothing

    # Reload: the open conversation comes back, with the saved thumb on the message.
    page.reload()
    page.wait_for_selector("#message textarea")
    expect(page.locator("#chatbot [data-testid='user']").last).to_contain_text("second question")
    # Clicking the lit thumb again unselects it in Gradio: it must not turn into a 👎.
    page.locator("#chatbot button[aria-label='Liked']").click()
    expect(page.locator("#chat-notice")).to_contain_text("Your rating stays")
    assert [r["rating"] for r in ratings(home)] == ["up"]
    page.screenshot(path=OUTPUT / "page-chat-rated.png", full_page=True)
    page.close()


def test_a_thumb_asks_why_on_the_answer_itself(browser, server):  # noqa: F811
    url, _, home = server
    page = open_page(browser, url)
    short_answers(page)
    answer = send(page, home, "a question to rate with reasons")
    page.locator("#chatbot button[aria-label='Dislike']").last.click()
    why = page.locator("#chatbot .answer-why")
    expect(why).to_contain_text("wrong")  # the 👎 reasons, right under the answer
    expect(why).not_to_contain_text("accurate")
    why.get_by_label("wrong", exact=True).check()
    why.get_by_label("Comment (optional)").fill("the year is off")
    page.screenshot(path=OUTPUT / "page-chat-why-desktop.png", full_page=True)
    why.get_by_role("button", name="Save").click()
    expect(why).to_contain_text("Saved")
    latest = [r for r in ratings(home) if r["message_id"] == answer["id"]][-1]
    assert (latest["rating"], json.loads(latest["reasons"]), latest["comment"]) == (
        "down", ["wrong"], "the year is off")
    page.close()


def test_a_message_is_edited_in_place_and_starts_a_new_branch(browser, server):  # noqa: F811
    url, _, home = server
    page = open_page(browser, url)
    short_answers(page)
    first = send(page, home, "the question as first written")
    chat = page.locator("#chatbot")
    chat.get_by_text("the question as first written").hover()
    chat.get_by_role("button", name="Edit").first.click()
    page.fill("#chatbot textarea.edit-textarea", "the question as rewritten")
    second = answer_to(home, lambda: chat.get_by_role("button", name="Submit").click(),
                       "the answer to the edited question")
    expect(page.locator("#send")).to_be_enabled()
    with open_db(home) as db:
        asked = [store.get_message(db, a["parent_id"]) for a in (first, second)]
    assert asked[1]["content"] == "the question as rewritten"
    assert asked[0]["parent_id"] == asked[1]["parent_id"]  # siblings: a new branch
    assert second["conversation_id"] == first["conversation_id"]
    expect(chat).to_contain_text("the question as rewritten")
    expect(chat).not_to_contain_text("the question as first written")
    page.close()


def test_the_last_answer_shows_its_versions_and_moves_between_them(browser, server):  # noqa: F811
    url, _, home = server
    page = open_page(browser, url)
    short_answers(page)
    send(page, home, "a question answered twice")
    answer_to(home, lambda: page.click("#regenerate"), "the second answer")
    chat = page.locator("#chatbot")
    expect(chat.get_by_role("button", name="2/2")).to_be_visible()  # ‹ 2/2 ›
    chat.get_by_role("button", name="‹").click()
    expect(chat.get_by_role("button", name="1/2")).to_be_visible()
    expect(page.locator("#selected")).to_contain_text("Selected answer 1 of 2")
    chat.get_by_role("button", name="›").click()
    expect(chat.get_by_role("button", name="2/2")).to_be_visible()
    page.screenshot(path=OUTPUT / "page-chat-versions-desktop.png", full_page=True)
    page.close()


def test_an_earlier_answer_shows_its_versions_and_moves_between_them(browser,  # noqa: F811
                                                                     server):
    url, _, home = server
    page = open_page(browser, url)
    short_answers(page)
    send(page, home, "a first question answered twice")
    answer_to(home, lambda: page.click("#regenerate"), "its second answer")
    expect(page.locator("#send")).to_be_enabled()
    send(page, home, "a follow-up question")
    chat = page.locator("#chatbot")
    first = chat.locator("[data-testid='bot']").first
    expect(first.locator(".answer-versions-bar")).to_contain_text("2/2")  # ‹ 2/2 › on it
    expect(chat.locator(".answer-versions-bar")).to_have_count(1)  # the last has one version
    page.screenshot(path=OUTPUT / "page-chat-earlier-versions-desktop.png", full_page=True)
    first.get_by_role("button", name="Previous version of this answer").click()
    # The first version's branch, where nothing followed it: it is the last answer now.
    expect(chat).not_to_contain_text("a follow-up question")
    expect(chat.get_by_role("button", name="1/2")).to_be_visible()
    expect(page.locator("#selected")).to_contain_text("Selected answer 1 of 2")
    page.close()


def test_a_title_is_renamed_in_place_in_the_list(browser, server):  # noqa: F811
    url, _, home = server
    page = open_page(browser, url)
    short_answers(page)
    answer = send(page, home, "a question whose title changes")
    listed = page.locator("#conversations label")
    listed.filter(has_text="a question whose title changes").dblclick()
    editor = page.locator("#conversations input.rename-in-place")
    expect(editor).to_have_value("a question whose title changes")  # it starts from the title
    editor.fill("renamed right in the list")
    editor.press("Enter")
    expect(listed.filter(has_text="renamed right in the list")).to_have_count(1)
    with open_db(home) as db:
        assert store.get_conversation(db, answer["conversation_id"])["title"] == \
            "renamed right in the list"
    renamed = listed.filter(has_text="renamed right in the list")
    renamed.locator("input[type=radio]").press("F2")  # the keyboard's way in
    editor.fill("not this after all")
    editor.press("Escape")  # leaves it as it was
    expect(editor).to_have_count(0)
    expect(renamed).to_be_visible()
    with open_db(home) as db:
        assert store.get_conversation(db, answer["conversation_id"])["title"] == \
            "renamed right in the list"
    page.close()


def test_shift_enter_is_a_new_line_and_enter_sends_it(browser, server):  # noqa: F811
    url, _, home = server
    page = open_page(browser, url)
    short_answers(page)
    before = len(answers(home))
    box = page.locator("#message textarea")
    box.press_sequentially("line one")
    box.press("Shift+Enter")
    box.press_sequentially("line two")
    expect(box).to_have_value("line one\nline two")
    assert len(answers(home)) == before  # nothing was sent
    answer = answer_to(home, lambda: box.press("Enter"), "the answer")
    with open_db(home) as db:
        assert store.get_message(db, answer["parent_id"])["content"] == "line one\nline two"
    page.close()


def test_answers_render_code_with_a_copy_button_and_math(browser, server):  # noqa: F811
    url, _, home = server
    with open_db(home) as db:  # an answer as a capable model writes one
        store.store_transcript(db, [
            {"role": "user", "content": "code and a formula please"},
            {"role": "assistant", "content": "Here:\n\n```python\nprint(6 * 7)\n```\n\n"
                                             "and $$e^{i\\pi} + 1 = 0$$"}])
    page = open_page(browser, url)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
    page.locator("#conversations label", has_text="code and a formula please").click()
    chat = page.locator("#chatbot")
    expect(chat.locator("pre code")).to_contain_text("print(6 * 7)")
    expect(chat.locator(".katex").first).to_be_visible()  # typeset, not "$$...$$"
    chat.locator("button.copy_code_button").first.click()
    assert wait_for(lambda: page.evaluate("navigator.clipboard.readText()") == "print(6 * 7)",
                    10, "the code on the clipboard", every=0.2)
    page.screenshot(path=OUTPUT / "page-chat-code-math-desktop.png", full_page=True)
    page.close()


def test_esc_stops_a_streaming_answer(browser, server):  # noqa: F811
    url, _, home = server
    page = open_page(browser, url)
    page.get_by_text("Settings").click()
    set_slider(page, "max-tokens", "448")  # the tiny model's context is 512
    set_slider(page, "temperature", "0")  # greedy: no early end by chance
    before = len(answers(home))
    page.fill("#message textarea", "a long answer, please")
    page.click("#send")
    expect(page.locator("#send")).to_be_disabled()  # streaming
    page.fill("#message textarea", "a draft typed while it streams")
    page.keyboard.press("Escape")
    stopped = wait_for(lambda: len(answers(home)) > before and answers(home)[-1], 60,
                       "the stopped answer")
    assert stopped["finish_reason"] == "interrupted", stopped
    assert stopped["completion_tokens"] < 448
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#message textarea")).to_have_value("a draft typed while it streams")
    page.close()


def test_an_empty_queue_empties_the_review_form(browser, server):  # noqa: F811
    url, _, home = server
    page = open_page(browser, url)
    page.get_by_role("tab", name="Curate").click()
    page.locator("#filter-reviewed input").click()
    page.get_by_role("option", name="any").click()
    page.click("#load-queue")
    page.locator("#queue [data-testid='cell-0-5']").click()
    expect(page.locator("#save-review")).to_be_enabled()
    page.locator("#score").get_by_text("2", exact=True).click()
    page.fill("#correction textarea", "a correction for the old answer")

    page.fill("#filter-since input, #filter-since textarea", "2999-01-01")
    page.click("#load-queue")
    expect(page.locator("#queue-count")).to_contain_text("0 answers")
    expect(page.locator("#correction textarea")).to_have_value("")
    expect(page.locator("#score input:checked")).to_have_count(0)
    expect(page.locator("#save-review")).to_be_disabled()
    with open_db(home) as db:
        assert db["corrections"].count == 0
        assert db.execute("SELECT COUNT(*) FROM ratings WHERE score IS NOT NULL").fetchone()[0] == 0
    page.close()


def test_errors_show_beside_their_cause_and_nothing_freezes(browser, server):  # noqa: F811
    url, _, _ = server
    page = open_page(browser, url)  # a new chat: nothing to regenerate or rename yet
    expect(page.locator("#regenerate")).to_be_disabled()
    expect(page.locator("#rename")).to_be_disabled()
    page.locator("#message textarea").press("Enter")
    expect(page.locator("#chat-notice")).to_contain_text("Type a message first")
    no_error_badges(page)
    page.fill("#message textarea", "still typeable")
    expect(page.locator("#message textarea")).to_have_value("still typeable")

    page.locator("#conversations label").first.click()
    expect(page.locator("#rename")).to_be_enabled()
    page.click("#rename")  # with an empty title
    expect(page.locator("#title-note")).to_contain_text("Write the new title first")
    no_error_badges(page)

    page.get_by_role("tab", name="Curate").click()
    page.fill("#filter-since input, #filter-since textarea", "yesterday")
    page.click("#load-queue")
    expect(page.locator("#queue-count")).to_contain_text("YYYY-MM-DD")
    no_error_badges(page)
    page.screenshot(path=OUTPUT / "page-errors-inline.png", full_page=True)
    page.close()


def test_a_deleted_chat_is_gone_from_the_queue_and_training_and_can_be_undone(
        browser, server):  # noqa: F811
    url, _, home = server
    page = open_page(browser, url)
    page.click("#new-chat")
    answer = send(page, home, "something private")
    page.get_by_text("Rate or edit the selected message").click()
    page.locator("#thumb").get_by_text("👎").click()
    page.click("#save-rating")
    expect(page.locator("#rating-status")).to_contain_text("Saved")

    def in_queue_and_training() -> tuple[bool, bool]:
        with open_db(home) as db:
            queued = {r["id"] for r in review.review_queue(db, limit=1000).rows}
            trained = {i for _, ex in selection.examples(db) for i in ex["message_ids"]}
        return answer["id"] in queued, answer["id"] in trained
    assert in_queue_and_training() == (True, True)

    page.click("#delete-chat")
    expect(page.locator("#chat-notice")).to_contain_text("Conversation deleted")
    expect(page.locator("#conversations")).not_to_contain_text("something private")
    assert in_queue_and_training() == (False, False)
    with open_db(home) as db:  # nobody rates or reviews it by its id either
        assert store.message_for(db, answer["id"], None, any_owner=True) is None
    page.click("#undo-delete")
    expect(page.locator("#conversations")).to_contain_text("something private")
    assert in_queue_and_training() == (True, True)

    # Deleted again, the nightly prune erases it for good, and past runs that trained on it
    # say so in their manifests.
    page.click("#delete-chat")
    expect(page.locator("#chat-notice")).to_contain_text("Conversation deleted")
    run_id = "run-trained-on-it"
    (home.runs_dir / run_id).mkdir(parents=True)
    (home.runs_dir / run_id / "sft-train.jsonl").write_text(json.dumps(
        {"message_ids": [answer["id"]], "conversation_id": answer["conversation_id"]}) + "\n")
    with open_db(home) as db:
        db["training_runs"].insert({"id": run_id, "status": "succeeded", "base_model": "tiny",
                                    "method": "sft"})
        gone = prune(db, home, keep_days=365)
        assert gone["conversations"] == 1 and gone["replay examples"] == 1
        assert store.get_message(db, answer["id"]) is None
        manifest = json.loads(db["training_runs"].get(run_id)["manifest"])
    assert manifest["erased_examples"] == 1
    page.close()


def answered(srv, text: str, user_id=None) -> str:
    """An answer stored through the chat service (as the page or the API would)."""
    turn = srv.service.reply(None, None, text, GenerationParams(max_tokens=24),
                             user_id=user_id)
    "".join(turn)
    return turn.id


def test_a_curator_reviews_with_the_keyboard_alone(browser, server):  # noqa: F811
    url, srv, home = server
    for n in range(3):
        answered(srv, f"question for review {n}")
    page = open_page(browser, url)
    page.get_by_role("tab", name="Curate").click()
    page.click("#load-queue")
    expect(page.locator("#queue-count")).to_contain_text("reviewed")
    expect(page.locator("#queue")).to_be_visible()
    started = time.perf_counter()
    page.keyboard.press("j")  # the first answer of the page
    expect(page.locator("#save-review")).to_be_enabled()
    original = page.locator("#correction textarea").input_value()
    assert original  # the editor starts from the answer itself
    page.keyboard.press("4")
    page.keyboard.press("e")
    page.keyboard.press("Control+End")  # the end of the text (End: of the first line)
    page.keyboard.type(" Fixed.")
    page.keyboard.press("Escape")
    expect(page.locator("#correction-diff ins")).to_contain_text("Fixed.")
    page.keyboard.press("s")
    expect(page.locator("#review-status")).to_contain_text("Saved; here is the next one")
    elapsed = time.perf_counter() - started
    (OUTPUT / "curate-keyboard.json").write_text(json.dumps(
        {"keys": "j 4 e Ctrl+End ' Fixed.' Esc s", "seconds": round(elapsed, 2)}))
    with open_db(home) as db:
        [fixed] = [c for c in store.corrections(db) if c["correction"].endswith("Fixed.")]
        scored = db.execute("SELECT score FROM ratings WHERE message_id = ? AND score IS NOT "
                            "NULL", [fixed["id"]]).fetchone()
    assert scored == (4,)
    assert fixed["correction"] == (original + " Fixed.").strip()
    # The next answer is open, with its own text in the editor; k goes back.
    expect(page.locator("#correction textarea")).not_to_have_value(original)
    page.keyboard.press("k")
    expect(page.locator("#correction textarea")).to_have_value(fixed["correction"])
    page.screenshot(path=OUTPUT / "page-curate-keyboard.png", full_page=True)
    page.close()


def test_side_by_side_is_blind_until_the_pick_and_keeps_both_bad_apart(
        browser, server):  # noqa: F811
    url, srv, home = server
    page = open_page(browser, url)
    page.get_by_role("tab", name="Curate").click()
    page.get_by_role("tab", name="Side by side").click()
    versions = srv.service.model_names()[:2]
    for choice in ("both_bad", "1"):
        page.fill("#compare-prompt textarea", f"compare me ({choice})")
        page.click("#compare")
        expect(page.locator("#pick-1")).to_be_enabled(timeout=60_000)
        for box in ("#answer-1 textarea", "#answer-2 textarea"):
            assert page.locator(box).input_value()
        expect(page.locator("#pick-status")).not_to_contain_text(versions[0])
        page.fill("#pick-reason textarea", "clearer" if choice == "1" else "")
        page.click("#pick-both-bad" if choice == "both_bad" else "#pick-1")
        expect(page.locator("#pick-status")).to_contain_text("Answer 1 was")
        expect(page.locator("#pick-1")).to_be_disabled()
    with open_db(home) as db:
        rows = list(db["comparisons"].rows_where(order_by="id"))
        named = {r["id"]: (store.get_message(db, r["answer_a"])["model"]) for r in rows}
    assert [r["winner"] in ("a", "b") for r in rows] == [False, True]
    assert rows[0]["winner"] == "both_bad" and rows[0]["reason"] is None
    # "1 is better" stored as the version that was shown as 1, whichever it was.
    assert rows[1]["winner"] == rows[1]["shown_first"] and rows[1]["reason"] == "clearer"
    assert all(named.values())
    page.screenshot(path=OUTPUT / "page-side-by-side.png", full_page=True)
    page.close()


def test_every_tab_passes_axe_on_desktop_and_phone_in_light_and_dark(
        browser, server):  # noqa: F811
    url, _, _ = server
    counts = {}
    for scheme in ("light", "dark"):
        for device, (width, height) in (("desktop", (1280, 800)), ("phone", (390, 844))):
            page = browser.new_page(viewport={"width": width, "height": height},
                                    color_scheme=scheme)
            page.goto(url)
            page.wait_for_selector("#message textarea", timeout=60_000)
            assert page.evaluate("() => document.body.classList.contains('dark')") == (
                scheme == "dark")  # the page follows the system's setting
            if device == "phone":  # the chat comes first; the list is folded below it
                chat = page.locator("#chat-column").bounding_box()
                assert chat["y"] < page.locator("#sidebar").bounding_box()["y"]
                expect(page.locator("#conversations")).to_be_hidden()
                page.get_by_role("button", name="Your conversations").click()
                expect(page.locator("#conversations")).to_be_visible()
            for tab, shown in (("Chat", "#message"), ("Curate", "#load-queue"),
                               ("Admin", "#refresh-adapters")):
                page.get_by_role("tab", name=tab).click()
                expect(page.locator(shown)).to_be_visible()
                expect(page.locator("#who")).to_contain_text("Signed in")  # loaded
                found = Axe().run(page).response["violations"]
                if any(v["impact"] in ("critical", "serious") for v in found):
                    # Count only what a second look still finds: a colour read in the middle
                    # of Gradio's theme transition is not the page's colour.
                    again = {(v["id"], str(n["target"])) for v in Axe().run(page).response[
                        "violations"] for n in v["nodes"]}
                    found = [{**v, "nodes": [n for n in v["nodes"]
                                             if (v["id"], str(n["target"])) in again]}
                             for v in found]
                counts[f"{scheme} {device} {tab}"] = {
                    **{impact: sum(len(v["nodes"]) for v in found if v["impact"] == impact)
                       for impact in ("critical", "serious", "moderate", "minor")},
                    "where": [f"{v['id']}: {n['target']}" for v in found for n in v["nodes"]]}
                page.screenshot(path=OUTPUT / f"page-{tab.lower()}-{device}-{scheme}.png",
                                full_page=True)
            page.close()
    (OUTPUT / "axe.json").write_text(json.dumps(counts, indent=1))
    serious = {k: v for k, v in counts.items() if v["critical"] or v["serious"]}
    assert serious == {}
    # Controls have names a screen reader can say.
    page = open_page(browser, url)
    for role, name in (("textbox", "Message"), ("textbox", "Title of this conversation"),
                       ("button", "◀ Previous version"), ("button", "Next version ▶")):
        expect(page.get_by_role(role, name=name)).to_have_count(1)
    page.close()


def test_the_plots_show_rates_answers_feedback_and_each_promotion(browser, server):  # noqa: F811
    url, srv, home = server
    with open_db(home) as db:  # a rollback to the base model, as `flywheel adapters` records
        db["promotions"].insert({"adapter_id": None, "action": "rollback", "reason": "test"})
        data = activity.over_time(db)
    assert data.volume and data.promotions  # the earlier tests' answers and this rollback
    page = open_page(browser, url)
    page.get_by_role("tab", name="Admin").click()
    page.get_by_role("tab", name="Plots").click()
    expect(page.locator("#activity-plot img")).to_be_visible()
    found = Axe().run(page).response["violations"]
    assert [(v["id"], [n["target"] for n in v["nodes"]]) for v in found
            if v["impact"] in ("critical", "serious")] == []
    page.screenshot(path=OUTPUT / "page-admin-plots-desktop.png", full_page=True)
    page.close()


def test_an_admin_watches_a_run_train_live_and_reads_what_it_did(browser, server):  # noqa: F811
    url, _, home = server
    with lock.training_lock(home):  # as `flywheel train` holds it (the run is not stale)
        with open_db(home) as db:  # the run starts with its data phase, method not yet picked
            run_id = runs.start(db, base_model="tiny", method="", config={}, manifest={})
            runs.set_progress(db, run_id, phase="data")
        page = open_page(browser, url)
        page.get_by_role("tab", name="Admin").click()
        shown = page.locator("#train-progress")
        report_to(home, run_id)  # as the run's data pipeline does
        try:
            with PhaseBar(total=500, desc="sft: near duplicates", unit=" examples") as bar:
                bar.update(500)
                expect(shown).to_contain_text("data: sft: near duplicates, 500 of 500")
                expect(shown).to_contain_text("method picked after the data")
        finally:
            stop_reporting()
        expect(shown).to_contain_text("done: sft: near duplicates: 500 examples")
        with open_db(home) as db:
            runs.set_manifest(db, run_id, {"count": 500}, method="sft")
        callback = ProgressToDatabase(home, run_id, "1/1 sft")  # what the Trainer calls
        state = TrainerState(global_step=0, max_steps=120)
        callback.on_train_begin(None, state, None)

        def train_to(last: int) -> None:
            for step in range(state.global_step + 1, last + 1):
                state.global_step = step
                callback.on_log(None, state, None, logs={"loss": round(3 - step / 100, 2)})
        train_to(40)
        expect(shown).to_contain_text("step 40 of 120")
        expect(shown).to_contain_text("✓ data (sft: near duplicates: 500 examples)")
        expect(shown).to_contain_text("left")
        expect(page.locator("#live-loss img")).to_be_visible()
        train_to(80)  # the page follows on its own
        expect(shown).to_contain_text("step 80 of 120")
        page.screenshot(path=OUTPUT / "page-admin-training-desktop.png", full_page=True)
        with open_db(home) as db:
            runs.finish(db, run_id, metrics={}, adapter_id=None)
            runs.set_progress(db, run_id, phase="done", decision="rejected: the server keeps "
                                                               "what it serves now")
    expect(shown).to_contain_text("Done: rejected: the server keeps what it serves now.")
    expect(page.locator("#live-loss img")).to_be_hidden()
    assert "{" not in shown.inner_text()  # no Python dicts
    page.close()


def test_the_first_account_made_in_the_page_is_an_admin_and_sign_in_starts(
        browser, server):  # noqa: F811
    url, _, home = server
    page = open_page(browser, url)
    page.get_by_role("tab", name="Admin").click()
    page.get_by_role("tab", name="Users").click()
    expect(page.locator("#users-intro")).to_contain_text("The first account you add must be "
                                                         "an admin")
    page.fill("#user-name textarea", "erin")
    page.fill("#user-password input", PASSWORD)
    page.click("#add-user")  # the role is still "user"
    expect(page.locator("#user-status")).to_contain_text("The first account must be an admin")
    no_error_badges(page)
    with open_db(home) as db:
        assert not users.auth_enabled(db)

    page.locator("#user-role input").click()
    page.get_by_role("option", name="admin").click()
    page.click("#add-user")
    expect(page.locator("#user-status")).to_contain_text("Sign-in is on now")
    expect(page.locator("#user-password input")).to_have_value("")
    no_error_badges(page)
    link = page.locator("#user-status a", has_text="sign in as erin")
    assert link.get_attribute("href").endswith("/login")
    page.goto(f"{url}/")  # the page itself now asks for a sign-in
    expect(page).to_have_url(f"{url}/login")
    submit_sign_in(page, "erin")
    expect(page.locator("#who")).to_contain_text("erin")
    page.close()


def test_no_password_reaches_the_browsers_storage(browser, server):  # noqa: F811
    url, _, home = server
    with open_db(home) as db:
        if not users.auth_enabled(db):  # when run alone
            users.add_user(db, "erin", "admin", password=PASSWORD)
    page = signed_in_page(browser, url, "erin")
    page.get_by_role("tab", name="Admin").click()
    page.get_by_role("tab", name="Users").click()
    page.fill("#user-name textarea", "carol")
    page.fill("#user-password input", "carol-pass-123")
    page.click("#add-user")
    expect(page.locator("#user-status")).to_contain_text("Added carol")
    expect(page.locator("#users")).to_contain_text("carol")
    stored = page.evaluate("() => JSON.stringify({...localStorage}) + "
                           "JSON.stringify({...sessionStorage})")
    assert "carol-pass-123" not in stored
    assert page.locator("footer").filter(visible=True).count() == 0  # no Runs, no API page
    expect(page.locator("#user-password input")).to_have_value("")

    # A disabled account hears that it is disabled (only with the right password).
    with open_db(home) as db:
        users.set_disabled(db, "carol", True)
    page.goto(f"{url}/login")
    submit_sign_in(page, "carol", "carol-pass-123")
    expect(page.locator("body")).to_contain_text("This account is disabled; ask an admin")
    submit_sign_in(page, "carol", "a wrong guess")
    expect(page.locator("body")).to_contain_text("Wrong name or password")
    page.close()


def test_two_curators_are_never_given_the_same_answer(browser, server):  # noqa: F811
    url, srv, home = server
    with open_db(home) as db:
        for name in ("erin", "frank"):
            if users.get_user(db, name) is None:
                users.add_user(db, name, "admin" if name == "erin" else "curator",
                               password=PASSWORD)
    for n in range(2):
        answered(srv, f"question for two curators {n}")
    pages = []
    for name in ("erin", "frank"):
        page = signed_in_page(browser, url, name)
        page.get_by_role("tab", name="Curate").click()
        page.click("#load-queue")
        expect(page.locator("#queue-count")).to_contain_text("reviewed")
        page.click("#review-next")
        expect(page.locator("#save-review")).to_be_enabled()
        pages.append(page)
    first, second = (p.locator("#correction textarea").input_value() for p in pages)
    assert first != second  # frank's Next skipped the answer erin has open
    for page in pages:
        page.close()


def test_a_refusal_worth_retrying_offers_retry_and_keeps_the_draft(browser, server):  # noqa: F811
    url, _, home = server
    with open_db(home) as db:
        if users.get_user(db, "gina") is None:
            users.add_user(db, "gina", "user", password=PASSWORD)
    page = signed_in_page(browser, url, "gina")
    short_answers(page)  # this test is about the refusal
    for n in range(2):  # the server allows gina 2 a minute
        send(page, home, f"message {n}")
    page.fill("#message textarea", "the draft I do not want to lose")
    page.click("#send")
    expect(page.locator("#chat-notice")).to_contain_text("requests a minute")
    expect(page.locator("#retry")).to_be_visible()
    expect(page.locator("#message textarea")).to_have_value("the draft I do not want to lose")
    no_error_badges(page)
    page.reload()  # a refused message is still a draft: a reload keeps it
    expect(page.locator("#message textarea")).to_have_value("the draft I do not want to lose")
    page.close()


def test_a_long_history_pages_and_a_search_finds_titles_and_messages(browser, server):  # noqa: F811
    url, _, home = server
    with open_db(home) as db:
        if users.get_user(db, "hana") is None:
            users.add_user(db, "hana", "user", password=PASSWORD)
        hana = users.get_user(db, "hana")["id"]
        chats = [f"old chat number {n}" for n in range(204)]  # more than a page of the list
        for minute, question in enumerate([*chats, "Is 100% of a_b the needle?"]):
            conversation, _ = store.store_transcript(
                db, [{"role": "user", "content": question},
                     {"role": "assistant", "content": "the needle's answer is a zucchini"
                      if "needle" in question else "an answer"}], hana)
            # One chat a minute, as a person makes them: stored in one loop, two could share a
            # millisecond, and the list's order between those two is the ids' (random).
            made = datetime.now(timezone.utc) - timedelta(minutes=205 - minute)
            db["conversations"].update(
                conversation, {"updated_at": made.strftime("%Y-%m-%dT%H:%M:%S.000Z")})
    page = signed_in_page(browser, url, "hana")
    listed = page.locator("#conversations label")
    expect(listed).to_have_count(200)
    expect(listed.first).to_contain_text("needle")  # the newest first
    page.click("#more-conversations")
    expect(listed).to_have_count(205)
    expect(listed.last).to_contain_text("old chat number 0")
    expect(page.locator("#more-conversations")).to_be_hidden()

    page.fill("#find-conversation textarea", "100% A_B")  # any case; % and _ are themselves
    expect(listed).to_have_count(1)
    page.fill("#find-conversation textarea", "chat number 20")
    expect(listed).to_have_count(6)  # 20, 200-203
    page.fill("#find-conversation textarea", "ZUCCHIN")  # a word of an answer: messages too
    expect(listed).to_have_count(1)
    expect(listed.first).to_contain_text("needle")
    page.fill("#find-conversation textarea", "needle")
    expect(listed).to_have_count(1)
    listed.first.click()
    expect(page.locator("#chatbot")).to_contain_text("the needle's answer")
    expect(listed).to_have_count(1)  # opening one keeps the search's results
    page.fill("#find-conversation textarea", "nothing like this")
    expect(listed).to_have_count(0)
    expect(page.locator("#conversations")).to_contain_text("No conversation holds those words")
    page.screenshot(path=OUTPUT / "page-chat-search-desktop.png", full_page=True)
    page.close()


def test_the_page_reconnects_by_itself_after_a_restart_and_keeps_the_draft(
        browser, tmp_path, tiny_model_dir):  # noqa: F811
    home = Home.resolve(tmp_path / "restarted")
    init_db(home)
    config = ServeConfig(model=str(tiny_model_dir), port=free_port(), poll_interval=0.2)
    with serve_in_thread(home, config) as (url, _):
        page = open_page(browser, url)
        send(page, home, "a question before the restart")
        page.locator("#message textarea").press_sequentially("a draft I was writing")
    # The server is gone: the page says so, and keeps what was typed.
    expect(page.locator("#server-gone")).to_contain_text("reconnects by itself")
    with serve_in_thread(home, config):
        expect(page.locator("#server-gone")).to_have_count(0, timeout=30_000)  # reloaded
        expect(page.locator("#message textarea")).to_have_value("a draft I was writing")
        expect(page.locator("#chatbot")).to_contain_text("a question before the restart")
        page.screenshot(path=OUTPUT / "page-chat-reconnected-desktop.png", full_page=True)
        page.close()


def test_curators_and_admins_see_which_version_wrote_each_answer_on_hover(
        browser, server):  # noqa: F811
    url, _, home = server
    adapter_id = "ad-20261204-101500-hover"
    (home.staging_dir / adapter_id).mkdir(parents=True)
    (home.staging_dir / adapter_id / "adapter_config.json").write_text("{}")
    with open_db(home) as db:
        adapters.publish(db, home, adapter_id, base_model="tiny", method="sft")
        for name, role in (("ivan", "curator"), ("jill", "user")):
            users.add_user(db, name, role, password=PASSWORD)
            owner = users.get_user(db, name)["id"]
            conversation = store.create_conversation(db, user_id=owner, title="two versions")
            question = store.add_message(db, conversation, "user", "first question")
            answer = store.add_message(db, conversation, "assistant", "from the base", question)
            question = store.add_message(db, conversation, "user", "second question", answer)
            store.add_message(db, conversation, "assistant", "from the adapter", question,
                              adapter_id=adapter_id)
    for name, titles in (("ivan", ["Answered by the base model", f"Answered by {adapter_id}"]),
                         ("jill", [None, None])):
        page = signed_in_page(browser, url, name)
        page.locator("#conversations label", has_text="two versions").click()
        shown = page.locator("#chatbot [data-testid='bot']")
        expect(shown.last).to_contain_text("from the adapter")
        if titles[0]:
            for n, title in enumerate(titles):
                expect(shown.nth(n)).to_have_attribute("title", title)
        else:  # a plain user's page never receives the versions
            expect(page.locator("#answer-details textarea")).to_have_value(
                '[{"at": 1, "of": 1}, {"at": 1, "of": 1}]')
            assert [shown.nth(n).get_attribute("title") for n in range(2)] == titles
        page.close()
