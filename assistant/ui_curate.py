"""The Curate tab (curators and admins): a review queue of answers with the conversation up
to each, a 1 to 5 score, a correction kept beside the original, flags that keep an answer out
of training (ui_review.py); and side by side, two adapter versions answering one prompt, the
better one picked (a preference pair: ui_compare.py). This module holds the tab's layout and
its wiring.

The page's API: /review_queue (the first 200 answers), /review_queue_next (the next 200 of
the queue loaded last in the same session), /show_answer, /save_review, /compare, /pick.
"""

import gradio as gr

from assistant.ui import Page, bind
from assistant.ui_compare import (
    CompareView,
    answer_both,
    choose_1,
    choose_2,
    choose_both_bad,
    choose_tie,
    compare,
    pick,
)
from assistant.ui_review import (
    PAGE,
    ReviewView,
    load_in_page,
    next_answer,
    next_in_page,
    next_page,
    previous_answer,
    queue,
    save_in_page,
    save_review,
    select_in_page,
    show_answer,
    show_changes,
)
from storage import BASE, adapters, open_db

COLUMNS = ["rating", "score", "reviewed", "adapter", "when", "answer"]
FLAG_LABELS = [("contains personal data", "pii"), ("unsafe", "unsafe"),
               ("no consent", "no_consent")]


def versions(page: Page, request: gr.Request):
    page.user(request, "curator")
    names = page.service.model_names()
    with open_db(page.home) as db:  # the newest versions; any id can still be typed in the API
        ids = [a["id"] for a in adapters.page(db, limit=50).rows]
    return (gr.Dropdown(choices=["any", BASE, *ids]),
            gr.Dropdown(choices=names, value=names[0]),
            gr.Dropdown(choices=names, value=names[1] if len(names) > 1 else names[0]))


def on_load(page: Page, request: gr.Request):
    if page.auth.user_named(getattr(request, "username", None))["role"] == "user":
        return gr.Dropdown(), gr.Dropdown(), gr.Dropdown()
    return versions(page, request)


def _layout(r: ReviewView, c: CompareView) -> None:
    r.ids, r.picked, c.pair, r.cursor = gr.State([]), gr.State(""), gr.State({}), gr.State({})
    r.row = gr.State(-1)
    with gr.Tabs():
        with gr.Tab("Review queue"):
            with gr.Row():
                r.rating = gr.Dropdown(["any", "down", "up", "unrated"], value="any",
                                       label="Rating", elem_id="filter-rating")
                r.adapter = gr.Dropdown(["any", BASE], value="any", label="Adapter",
                                        elem_id="filter-adapter")
                r.since = gr.Textbox(label="Since (YYYY-MM-DD)", elem_id="filter-since")
                r.reviewed = gr.Dropdown(["any", "no", "yes"], value="no", label="Reviewed",
                                         elem_id="filter-reviewed")
                r.load = gr.Button("Load queue", variant="primary", elem_id="load-queue")
            with gr.Row():
                r.count = gr.Markdown(elem_id="queue-count")
                r.more = gr.Button(f"Next {PAGE}", interactive=False, elem_id="queue-next")
            with gr.Row():
                r.previous_btn = gr.Button("◂ Previous answer (k)", size="sm",
                                           elem_id="review-previous")
                r.next_btn = gr.Button("Next answer (j) ▸", size="sm", elem_id="review-next")
                gr.Markdown("Keys: **j** / **k** next / previous · **1**-**5** score · **e** "
                            "edit the correction (Esc leaves it) · **s** save and open the next",
                            elem_id="review-keys")
            r.table = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True, visible=False,
                                   column_widths=["9%", "7%", "9%", "15%", "15%", "45%"],
                                   elem_id="queue")
            with gr.Row():
                r.conversation = gr.Chatbot(label="Conversation up to the answer", height=360,
                                            elem_id="review-chat")
                with gr.Column():
                    r.about = gr.Markdown()
                    r.score = gr.Radio([1, 2, 3, 4, 5], label="Score", elem_id="score")
                    r.correction = gr.Textbox(label="Correction (kept beside the original; "
                                                    "it starts as the answer: edit it)",
                                              lines=4, elem_id="correction")
                    r.changes = gr.HTML(elem_id="correction-diff")
                    r.flags = gr.CheckboxGroup(FLAG_LABELS, label="Keep out of training",
                                               elem_id="flags")
                    r.save = gr.Button("Save review", variant="primary", elem_id="save-review",
                                       interactive=False)
                    r.saved = gr.Markdown(elem_id="review-status")
        with gr.Tab("Side by side"):
            gr.Markdown("Pick two versions to compare. Their answers come back as **1** and "
                        "**2** in a random order; which version wrote which is shown only "
                        "after your pick, so the names cannot sway it.")
            c.prompt = gr.Textbox(label="Prompt", elem_id="compare-prompt")
            with gr.Row():
                c.model_a = gr.Dropdown(label="A version", elem_id="version-a")
                c.model_b = gr.Dropdown(label="Another version", elem_id="version-b")
                c.go = gr.Button("Answer with both", variant="primary", elem_id="compare")
            with gr.Row():
                c.answer_1 = gr.Textbox(label="Answer 1", lines=8, interactive=False,
                                        elem_id="answer-1")
                c.answer_2 = gr.Textbox(label="Answer 2", lines=8, interactive=False,
                                        elem_id="answer-2")
            c.why = gr.Textbox(label="Why (optional)", elem_id="pick-reason")
            with gr.Row():
                c.pick_1 = gr.Button("1 is better", elem_id="pick-1", interactive=False)
                c.pick_tie = gr.Button("Tie", elem_id="pick-tie", interactive=False)
                c.pick_bad = gr.Button("Both bad", elem_id="pick-both-bad", interactive=False)
                c.pick_2 = gr.Button("2 is better", elem_id="pick-2", interactive=False)
            c.picked_note = gr.Markdown(elem_id="pick-status")


def build(page: Page, demo: gr.Blocks) -> None:
    r, c = ReviewView(page), CompareView(page)
    _layout(r, c)
    form = r.form()
    filters = [r.rating, r.adapter, r.since, r.reviewed]
    paged = [r.table, r.ids, r.count, r.cursor, r.more, *form]
    r.load.click(bind(load_in_page, r), filters, paged, api_visibility="private")
    r.more.click(bind(next_in_page, r), [*filters, r.cursor], paged, api_visibility="private")
    r.table.select(bind(select_in_page, r), [r.ids], form, api_visibility="private")
    r.save.click(bind(save_in_page, r), [r.picked, r.score, r.correction, r.flags, r.ids], form,
                 api_visibility="private")
    r.next_btn.click(bind(next_answer, r), [r.ids, r.row], form, api_visibility="private")
    r.previous_btn.click(bind(previous_answer, r), [r.ids, r.row], form,
                         api_visibility="private")
    r.correction.blur(bind(show_changes, page), [r.picked, r.correction], [r.changes],
                      api_visibility="private", show_progress="hidden")
    # The API keeps its own outputs, and errors are errors there.
    api_load, api_next = gr.Button(visible=False), gr.Button(visible=False)
    api_load.click(bind(queue, page), filters, [r.table, r.ids, r.count, r.cursor],
                   api_name="review_queue")
    api_next.click(bind(next_page, page), [*filters, r.cursor],
                   [r.table, r.ids, r.count, r.cursor], api_name="review_queue_next")
    gr.api(bind(show_answer, page), api_name="show_answer")
    gr.api(bind(save_review, page), api_name="save_review")
    gr.api(bind(compare, page), api_name="compare")
    gr.api(bind(pick, page), api_name="pick")

    picks = c.picks()
    c.go.click(bind(answer_both, c), [c.prompt, c.model_a, c.model_b],
               [c.answer_1, c.answer_2, c.pair, c.picked_note, c.why, *picks],
               api_visibility="private", show_progress="hidden")
    for button, choose in ((c.pick_1, choose_1), (c.pick_2, choose_2), (c.pick_tie, choose_tie),
                           (c.pick_bad, choose_both_bad)):
        button.click(bind(choose, c), [c.pair, c.why], [c.picked_note, c.pair, *picks],
                     api_visibility="private")
    demo.load(bind(on_load, page), None, [r.adapter, c.model_a, c.model_b],
              api_visibility="private")
