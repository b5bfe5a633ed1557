"""The page's chat, found by hand in chromium and driven the way a person found it: Debian's
headless chromium through Playwright, against one real server on the tiny model (the answers
are noise, which is all these tests need). Rating, editing and versions of answers, titles,
keys, rendering, stopping, errors shown inline, deleting a chat, reconnecting. The tests run
in file order against the module's server: the empty-queue and error tests use the answers
and conversations the first ones stored. The Curate and Admin tabs and accounts are in
test_browser_curate_admin.py; the fixtures and helpers in fixtures_browser.py."""

import json

import pytest
from playwright.sync_api import expect

from assistant.server import ServeConfig, free_port, serve_in_thread
from storage import Home, init_db, open_db, review
from storage import chat as store
from storage.retention import prune
from tests.conftest import OUTPUT, wait_for
from tests.fixtures_browser import (
    answer_to,
    answers,
    no_error_badges,
    open_page,
    ratings,
    send,
    set_slider,
    short_answers,
)
from trainer import selection

pytestmark = [pytest.mark.slow, pytest.mark.integration]
# Playwright waits 5 s by default; on two shared cores a server round trip can take longer.
expect.set_options(timeout=20_000)


def test_a_rating_form_never_carries_over_to_another_answer(browser, page_server):
    url, _, home = page_server
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


def test_a_thumb_asks_why_on_the_answer_itself(browser, page_server):
    url, _, home = page_server
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


def test_a_message_is_edited_in_place_and_starts_a_new_branch(browser, page_server):
    url, _, home = page_server
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


def test_the_last_answer_shows_its_versions_and_moves_between_them(browser, page_server):
    url, _, home = page_server
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


def test_an_earlier_answer_shows_its_versions_and_moves_between_them(browser,
                                                                     page_server):
    url, _, home = page_server
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


def test_a_title_is_renamed_in_place_in_the_list(browser, page_server):
    url, _, home = page_server
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


def test_shift_enter_is_a_new_line_and_enter_sends_it(browser, page_server):
    url, _, home = page_server
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


def test_answers_render_code_with_a_copy_button_and_math(browser, page_server):
    url, _, home = page_server
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


def test_esc_stops_a_streaming_answer(browser, page_server):
    url, _, home = page_server
    page = open_page(browser, url)
    page.get_by_text("Settings").click()
    set_slider(page, "max-tokens", "448")  # the tiny model's context is 512
    set_slider(page, "temperature", "0")  # greedy: no early end by chance
    before = len(answers(home))
    # The tiny model's greedy answer to this prompt runs past 448 tokens with its end of turn
    # never within 1 nat of the top token (tried by hand: "a long answer, please" ended on
    # its own after 123 tokens, sometimes before the Esc landed on a busy machine).
    page.fill("#message textarea", "an answer that never ends")
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


def test_an_empty_queue_empties_the_review_form(browser, page_server):
    url, _, home = page_server
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


def test_errors_show_beside_their_cause_and_nothing_freezes(browser, page_server):
    url, _, _ = page_server
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
        browser, page_server):
    url, _, home = page_server
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


def test_the_page_reconnects_by_itself_after_a_restart_and_keeps_the_draft(
        browser, tmp_path, tiny_model_dir):
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
