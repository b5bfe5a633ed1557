"""The page's Curate and Admin tabs and its accounts, found by hand in chromium and driven
the way a person found them: Debian's headless chromium through Playwright, against one real
server on the tiny model (the answers are noise, which is all these tests need). The tests run
in file order: the plots use the answers the first ones stored, and the first account added
from the page turns sign-in on for the tests after it. The chat is in test_browser_chat.py;
the fixtures and helpers in fixtures_browser.py."""

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect
from transformers import TrainerState

from storage import activity, adapters, lock, open_db, runs, users
from storage import chat as store
from tests.conftest import OUTPUT
from tests.fixtures_browser import (
    PASSWORD,
    answered,
    no_error_badges,
    open_page,
    send,
    short_answers,
    signed_in_page,
    submit_sign_in,
)
from trainer.progress import PhaseBar, ProgressToDatabase, report_to, stop_reporting

pytestmark = [pytest.mark.slow, pytest.mark.integration]
# Playwright waits 5 s by default; on two shared cores a server round trip can take longer.
expect.set_options(timeout=20_000)


def test_a_curator_reviews_with_the_keyboard_alone(browser, page_server):
    url, srv, home = page_server
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
        browser, page_server):
    url, srv, home = page_server
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
        browser, page_server):
    url, _, _ = page_server
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


def test_the_plots_show_rates_answers_feedback_and_each_promotion(browser, page_server):
    url, srv, home = page_server
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


def test_an_admin_watches_a_run_train_live_and_reads_what_it_did(browser, page_server):
    url, _, home = page_server
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
        browser, page_server):
    url, _, home = page_server
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


def test_no_password_reaches_the_browsers_storage(browser, page_server):
    url, _, home = page_server
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


def test_two_curators_are_never_given_the_same_answer(browser, page_server):
    url, srv, home = page_server
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
    # Told apart by their questions: two answers sampled from the tiny model can both be empty.
    first, second = (p.locator("#review-chat").inner_text() for p in pages)
    assert "question" in first and first != second  # frank's Next skipped erin's answer
    for page in pages:
        page.close()


def test_a_refusal_worth_retrying_offers_retry_and_keeps_the_draft(browser, page_server):
    url, _, home = page_server
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


def test_a_long_history_pages_and_a_search_finds_titles_and_messages(browser, page_server):
    url, _, home = page_server
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


def test_curators_and_admins_see_which_version_wrote_each_answer_on_hover(
        browser, page_server):
    url, _, home = page_server
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
