"""The Curate tab's review queue: answers to review (thumbs-down first by default), filtered
and paged; the conversation up to an answer with the review it has so far; a 1 to 5 score, a
correction kept beside the original (its changes shown word by word), flags that keep an
answer out of training. An answer opened for review is claimed for a few minutes, so two
curators working down one queue do not review the same one.

The page's API: /review_queue (the first 200 answers), /review_queue_next (the next 200 of the
queue loaded last in the same session), /show_answer, /save_review.
"""

import difflib
import html
import threading
import time

import gradio as gr

from assistant.ui import Page
from storage import BASE, open_db, review
from storage import chat as store

PAGE = 200  # answers per page of the review queue
CLAIM_MINUTES = 5  # how long an answer opened for review is skipped on other pages


class Claims:
    """Which curator has which answer open, for a few minutes: a short claim, so that two
    curators working down one queue do not review the same answer. In the server's memory:
    a claim only has to outlive a review, not a restart."""

    def __init__(self, minutes: float = CLAIM_MINUTES):
        self.seconds = minutes * 60
        self.held: dict[str, tuple[str, float]] = {}
        self.lock = threading.Lock()

    def holder(self, message_id: str) -> str | None:
        with self.lock:
            name, until = self.held.get(message_id, (None, 0.0))
            return name if until > time.monotonic() else None

    def take(self, message_id: str, name: str) -> str:
        """Claim the answer for `name` unless someone else holds it; returns the holder."""
        with self.lock:
            now = time.monotonic()
            held, until = self.held.get(message_id, (None, 0.0))
            if held not in (None, name) and until > now:
                return held
            self.held = {k: v for k, v in self.held.items() if v[1] > now}  # forget old ones
            self.held[message_id] = (name, now + self.seconds)
            return name

    def release(self, message_id: str) -> None:
        with self.lock:
            self.held.pop(message_id, None)


def diff_html(original: str, corrected: str) -> str:
    """What a correction changed, word by word: removed words struck through, new ones marked."""
    if not corrected or corrected.strip() == original.strip():
        return ""
    old, new = original.split(), corrected.split()
    parts = []
    for op, a1, a2, b1, b2 in difflib.SequenceMatcher(a=old, b=new).get_opcodes():
        if op in ("delete", "replace"):
            parts.append(f"<del>{html.escape(' '.join(old[a1:a2]))}</del>")
        if op in ("insert", "replace"):
            parts.append(f"<ins>{html.escape(' '.join(new[b1:b2]))}</ins>")
        if op == "equal":
            parts.append(html.escape(" ".join(old[a1:a2])))
    return "<p><b>Changes:</b> " + " ".join(parts) + "</p>"


# ---- the API's handlers ------------------------------------------------------------------
def queue(page: Page, rating: str, adapter: str, since: str, reviewed: str,
          request: gr.Request):
    """The first page of answers to review, thumbs-down first by default."""
    return queue_page(page, rating, adapter, since, reviewed, None, 0, request)


def next_page(page: Page, rating: str, adapter: str, since: str, reviewed: str, cursor: dict,
              request: gr.Request):
    """The next page of the queue loaded last (in this session)."""
    if not cursor or not cursor.get("next"):
        raise gr.Error("This is the last page; load the queue again.")
    return queue_page(page, rating, adapter, since, reviewed, cursor["next"], cursor["shown"],
                      request)


def queue_page(page: Page, rating, adapter, since, reviewed, after, shown, request):
    page.user(request, "curator")
    since = (since or "").strip() or None
    if since and (len(since) != 10 or since[4] != "-" or since[7] != "-"):
        raise gr.Error("Write the date as YYYY-MM-DD.")
    with open_db(page.home) as db:
        try:
            result = review.review_queue(db, rating, adapter, since, reviewed,
                                         limit=PAGE, after=after)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
    rows = result.rows
    table = [[r["rating"] or "", r["score"] or "", "yes" if r["reviewed"] else "no",
              r["adapter_id"] or BASE, r["created_at"][:16].replace("T", " "),
              r["content"][:120]] for r in rows]
    count = (f"{len(rows)} answers" if not shown
             else f"answers {shown + 1} to {shown + len(rows)}")
    if result.next:
        count += f"; more after these (Next {PAGE})"
    cursor = {"next": result.next, "shown": shown + len(rows)}
    return table, [r["id"] for r in rows], count, cursor


def show_answer(page: Page, message_id: str, request: gr.Request):
    """The conversation up to an answer, and the review it has so far."""
    page.user(request, "curator")
    with open_db(page.home) as db:
        current = review.answer_review(db, message_id)
        if current is None:
            raise gr.Error("No such answer.")
        turns = store.history(db, message_id)
    history = [{"role": t["role"] if t["role"] != "system" else "user",
                "content": t["content"] if t["role"] != "system"
                else f"[system prompt] {t['content']}"} for t in turns]
    flags = current["flags"].split(",") if current["flags"] else []
    return (history, message_id, current["score"], current["correction"] or "", flags,
            f"Answer by {current['adapter_id'] or 'the base model'}")


def save_review(page: Page, message_id: str, score: int | None, correction: str,
                flags: list[str], request: gr.Request) -> str:
    """Store a score, a correction (beside the original) and the flags of an answer."""
    user = page.user(request, "curator")
    if not message_id:
        raise gr.Error("Pick an answer from the queue first.")
    correction = (correction or "").strip()
    try:
        page.service.check_feedback(correction=correction)
        with open_db(page.home) as db, store.transaction(db):
            current = review.answer_review(db, message_id)
            if current is None:
                raise KeyError("No such answer.")
            if score:
                store.rate(db, message_id, None, rater_id=user["id"], score=int(score))
            # The editor starts from the original: unchanged text is no correction.
            if (correction and correction != current["correction"]
                    and correction != current["content"].strip()):
                store.add_correction(db, message_id, correction, author_id=user["id"])
            store.set_flags(db, message_id, flags or [], author_id=user["id"])
    except (KeyError, ValueError) as exc:
        raise gr.Error(str(exc.args[0])) from None
    return "Saved."


# ---- the page's own events: they return {component: value}. Loading a queue empties
# the review form (it belonged to the answer shown before, and must never be saved onto
# it by mistake); a mistake is a line beside the filters, not "Error" over the table.
class ReviewView:
    """The review queue's components (built by ui_curate._layout) and the claims."""
    page: Page
    claims: Claims
    ids: gr.State
    picked: gr.State
    cursor: gr.State
    row: gr.State  # the row of the answer open for review
    rating: gr.Dropdown
    adapter: gr.Dropdown
    since: gr.Textbox
    reviewed: gr.Dropdown
    load: gr.Button
    count: gr.Markdown
    more: gr.Button
    previous_btn: gr.Button
    next_btn: gr.Button
    table: gr.Dataframe
    conversation: gr.Chatbot
    about: gr.Markdown
    score: gr.Radio
    correction: gr.Textbox
    changes: gr.HTML
    flags: gr.CheckboxGroup
    save: gr.Button
    saved: gr.Markdown

    def __init__(self, page: Page):
        self.page = page
        self.claims = Claims()

    def form(self) -> list:
        """The review form: what opening an answer fills in (show_answer's outputs first)."""
        return [self.conversation, self.picked, self.score, self.correction, self.flags,
                self.about, self.saved, self.save, self.changes, self.row]


def empty_form(view: ReviewView) -> dict:
    return {view.conversation: [], view.picked: "", view.score: None, view.correction: "",
            view.flags: [], view.about: "", view.saved: "", view.save: gr.Button(interactive=False),
            view.changes: ""}


def open_answer(view: ReviewView, message_id: str, request: gr.Request) -> dict:
    """Show an answer for review, and claim it: for a few minutes, Next and Save skip it
    on other curators' pages."""
    user = view.page.user(request, "curator")
    shown = dict(zip(view.form()[:6], show_answer(view.page, message_id, request)))
    original = shown[view.conversation][-1]["content"]
    with open_db(view.page.home) as db:
        asked = review.asker_feedback(db, message_id)
    thumbs = {"up": "👍", "down": "👎"}.get(asked.get("rating"), "no thumbs")
    said = ", ".join(asked.get("reasons") or [])
    comment = f' "{asked["comment"]}"' if asked.get("comment") else ""
    shown[view.about] = (f"{shown[view.about]} · asked by **{asked.get('asker', '?')}**: "
                         f"{thumbs}{' (' + said + ')' if said else ''}{comment}")
    holder = view.claims.take(message_id, user["name"])
    if holder != user["name"]:
        shown[view.about] += f" · ⚠️ **{holder}** is reviewing this one now"
    shown[view.correction] = shown[view.correction] or original  # edit the answer, not a blank box
    return {**shown, view.saved: "", view.save: gr.Button(interactive=True),
            view.changes: diff_html(original, shown[view.correction])}


def next_free(view: ReviewView, answer_ids: list[str], after: int, user: dict) -> int | None:
    """The first answer after position `after` that no other curator has claimed."""
    for at in range(after + 1, len(answer_ids)):
        if view.claims.holder(answer_ids[at]) in (None, user["name"]):
            return at
    return None


def step(view: ReviewView, answer_ids: list[str], at: float | None, by: int,
         request: gr.Request):
    """Open the next (by=1) or previous (by=-1) answer of the loaded page."""
    user = view.page.user(request, "curator")
    here = -1 if at is None else int(at)
    if by > 0:
        target = next_free(view, answer_ids, here, user)
    else:
        target = here - 1 if here > 0 else None
    if target is None or target >= len(answer_ids):
        return {view.saved: "No more answers on this page." if by > 0 else "This is the first."}
    return {**open_answer(view, answer_ids[target], request), view.row: target}


def next_answer(view: ReviewView, answer_ids: list[str], at: float | None, request: gr.Request):
    return step(view, answer_ids, at, 1, request)


def previous_answer(view: ReviewView, answer_ids: list[str], at: float | None,
                    request: gr.Request):
    return step(view, answer_ids, at, -1, request)


def show_changes(page: Page, message_id: str, text: str, request: gr.Request):
    page.user(request, "curator")
    if not message_id:
        return ""
    with open_db(page.home) as db:
        answer = store.get_message(db, message_id)
    return diff_html(answer["content"] if answer else "", text)


def queue_in_page(view: ReviewView, result) -> dict:
    try:
        table_rows, answer_ids, counted, at = result()
    except gr.Error as exc:
        return {view.count: f"⚠️ {exc.message}", **empty_form(view)}
    with open_db(view.page.home) as db:
        states = review.queue_counts(db)
    summary = (f"{states['down']} 👎 · {states['unrated']} unrated · {states['up']} 👍 · "
               f"{states['reviewed']} reviewed")
    return {view.table: gr.Dataframe(value=table_rows, visible=True), view.ids: answer_ids,
            view.count: f"{counted} · in all: {summary}",
            view.row: -1,
            view.cursor: at, view.more: gr.Button(interactive=bool(at.get("next"))),
            **empty_form(view)}


def load_in_page(view: ReviewView, rating, adapter, since, reviewed, request: gr.Request):
    return queue_in_page(view, lambda: queue(view.page, rating, adapter, since, reviewed,
                                             request))


def next_in_page(view: ReviewView, rating, adapter, since, reviewed, at, request: gr.Request):
    return queue_in_page(view, lambda: next_page(view.page, rating, adapter, since, reviewed,
                                                 at, request))


def select_in_page(view: ReviewView, answer_ids: list[str], event: gr.SelectData,
                   request: gr.Request):
    index = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
    return {**open_answer(view, answer_ids[index], request), view.row: index}


def save_in_page(view: ReviewView, message_id, chosen_score, text, chosen_flags, answer_ids,
                 request: gr.Request):
    """Save, then open the next answer of the loaded page (the review flow moves on)."""
    try:
        save_review(view.page, message_id, chosen_score, text, chosen_flags, request)
    except gr.Error as exc:
        return {view.saved: f"⚠️ {exc.message}"}
    view.claims.release(message_id)
    user = view.page.user(request, "curator")
    here = answer_ids.index(message_id) if message_id in answer_ids else len(answer_ids)
    at = next_free(view, answer_ids, here, user)
    if at is None:
        return {**empty_form(view), view.saved: "Saved. That was the last answer of this page."}
    return {**open_answer(view, answer_ids[at], request),
            view.saved: "Saved; here is the next one.", view.row: at}
