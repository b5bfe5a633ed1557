"""The Curate tab's side by side: two adapter versions answer one prompt (greedy, batched
together) in a conversation of the curator's, and the better answer is picked (a preference
pair), or a tie, or both bad. On the page it is blind, as arenas do: the answers stream as 1
and 2 in a random order, and which version wrote which is shown only after the pick.

The page's API: /compare, /pick.
"""

import queue
import secrets
import threading

import gradio as gr

from assistant.inference import GenerationParams, RequestError
from assistant.ui import Page
from storage import chat as store
from storage import open_db, review


def start_both(page: Page, prompt: str, model_a: str, model_b: str, request: gr.Request):
    """Both versions start answering the same prompt (greedy, batched together), in a
    conversation of the curator's."""
    user = page.user(request, "curator")
    prompt = (prompt or "").strip()
    if not prompt or model_a == model_b:
        raise gr.Error("Write a prompt and pick two different versions.")
    greedy = GenerationParams(temperature=0.0)
    try:
        first = page.service.reply(None, None, prompt, greedy, model=model_a,
                                   user_id=user["id"])
        second = page.service.regenerate(first.user_message_id, greedy, model=model_b,
                                         user_id=user["id"])
    except (RequestError, KeyError) as exc:
        raise gr.Error(f"Cannot compare: {exc}") from None
    return first, second


def compare(page: Page, prompt: str, model_a: str, model_b: str, request: gr.Request) -> dict:
    """Both versions answer the same prompt (greedy), in a conversation of the curator's.
    Returns both texts and the ids that `pick` takes."""
    first, second = start_both(page, prompt, model_a, model_b, request)
    return {"prompt_id": first.user_message_id, "answer_a": first.id,
            "answer_b": second.id, "text_a": "".join(first), "text_b": "".join(second)}


def pick(page: Page, prompt_id: str, answer_a: str, answer_b: str, winner: str,
         request: gr.Request, reason: str = "", shown_first: str = "") -> str:
    """Store which answer to `prompt_id` is better: 'a' or 'b' (a preference pair), 'tie'
    or 'both_bad', with an optional reason."""
    user = page.user(request, "curator")
    with open_db(page.home) as db:
        for answer in (answer_a, answer_b):
            row = store.get_message(db, answer)
            if row is None or row["parent_id"] != prompt_id:
                raise gr.Error("Both answers must answer that prompt.")
        try:
            review.record_comparison(db, prompt_id, answer_a, answer_b, winner,
                                     curator_id=user["id"], reason=reason,
                                     shown_first=shown_first or None)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
    return {"a": "Saved: A is better.", "b": "Saved: B is better.",
            "tie": "Saved: a tie.", "both_bad": "Saved: both are bad."}[winner]


# ---- the page's own events: they return {component: value} --------------------------------
class CompareView:
    """The side by side's components (built by ui_curate._layout)."""
    page: Page
    pair: gr.State  # which version is answer 1, until the pick reveals it
    prompt: gr.Textbox
    model_a: gr.Dropdown
    model_b: gr.Dropdown
    go: gr.Button
    answer_1: gr.Textbox
    answer_2: gr.Textbox
    why: gr.Textbox
    pick_1: gr.Button
    pick_tie: gr.Button
    pick_bad: gr.Button
    pick_2: gr.Button
    picked_note: gr.Markdown

    def __init__(self, page: Page):
        self.page = page

    def picks(self) -> list[gr.Button]:
        return [self.pick_1, self.pick_tie, self.pick_bad, self.pick_2]


def answer_both(view: CompareView, prompt: str, model_a: str, model_b: str,
                request: gr.Request):
    """Blind, as arenas do: the two answers stream side by side as 1 and 2, in a random
    order; `pair` remembers which is which until the pick reveals it."""
    try:
        first, second = start_both(view.page, prompt, model_a, model_b, request)
    except gr.Error as exc:
        yield {view.picked_note: f"⚠️ {exc.message}"}
        return
    swap = secrets.randbelow(2) == 1  # which version is shown as 1
    shown = [(second, model_b), (first, model_a)] if swap else [(first, model_a),
                                                                (second, model_b)]
    hidden = {"prompt_id": first.user_message_id, "answer_a": first.id,
              "answer_b": second.id, "shown_first": "b" if swap else "a",
              "names": [name for _, name in shown]}
    off = {button: gr.Button(interactive=False) for button in view.picks()}
    yield {view.answer_1: "", view.answer_2: "", view.pair: {}, view.picked_note: "",
           view.why: "", **off}
    texts = ["", ""]
    for index, piece in _interleave(shown[0][0], shown[1][0]):
        texts[index] += piece
        yield {view.answer_1: texts[0], view.answer_2: texts[1]}
    yield {view.pair: hidden, **{button: gr.Button(interactive=True) for button in view.picks()}}


def choose(view: CompareView, choice: str, hidden: dict, reason: str, request: gr.Request):
    """Store the pick of the button pressed, and show which version wrote which answer."""
    if not hidden:
        return {view.picked_note: "Answer with both versions first."}
    # choice is "1", "2", "tie" or "both_bad"; 1 is answer a unless the order swapped
    winner = choice
    if choice in ("1", "2"):
        winner = "a" if (choice == "1") == (hidden["shown_first"] == "a") else "b"
    try:
        note = pick(view.page, hidden["prompt_id"], hidden["answer_a"], hidden["answer_b"],
                    winner, request, reason=reason, shown_first=hidden["shown_first"])
    except gr.Error as exc:
        return {view.picked_note: f"⚠️ {exc.message}"}
    one, two = hidden["names"]
    verdict = {"1": "1 is better", "2": "2 is better", "tie": "a tie",
               "both_bad": "both bad"}[choice]
    return {view.picked_note: f"{note.split(':')[0]}: {verdict}. Answer 1 was **{one}**, "
                              f"answer 2 was **{two}**.", view.pair: {},
            **{button: gr.Button(interactive=False) for button in view.picks()}}


def choose_1(view: CompareView, hidden: dict, reason: str, request: gr.Request):
    return choose(view, "1", hidden, reason, request)


def choose_2(view: CompareView, hidden: dict, reason: str, request: gr.Request):
    return choose(view, "2", hidden, reason, request)


def choose_tie(view: CompareView, hidden: dict, reason: str, request: gr.Request):
    return choose(view, "tie", hidden, reason, request)


def choose_both_bad(view: CompareView, hidden: dict, reason: str, request: gr.Request):
    return choose(view, "both_bad", hidden, reason, request)


def _interleave(*turns):
    """(index, piece) from several streaming answers as each piece arrives: both answers grow
    on the page together. A thread per answer, since each stream blocks until its next piece."""
    pieces: queue.Queue = queue.Queue()

    def drain(index, turn):
        try:
            for piece in turn:
                pieces.put((index, piece))
        finally:
            pieces.put((index, None))
    for index, turn in enumerate(turns):
        threading.Thread(target=drain, args=(index, turn), daemon=True).start()
    running = len(turns)
    while running:
        index, piece = pieces.get()
        if piece is None:
            running -= 1
        else:
            yield index, piece
