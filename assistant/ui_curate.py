"""The Curate tab (curators and admins): a review queue of answers with the conversation up
to each, a 1 to 5 score, a correction kept beside the original, flags that keep an answer out
of training; and side by side, two adapter versions answering one prompt, the better one
picked (a preference pair).

The page's API: /review_queue (the first 200 answers), /review_queue_next (the next 200 of
the queue loaded last in the same session), /show_answer, /save_review, /compare, /pick.
"""

import difflib
import html
import queue
import secrets
import threading
import time

import gradio as gr

from assistant.inference import GenerationParams, RequestError
from storage import adapters, open_db, review
from storage import chat as store

COLUMNS = ["rating", "score", "reviewed", "adapter", "when", "answer"]
PAGE = 200  # answers per page of the review queue
FLAG_LABELS = [("contains personal data", "pii"), ("unsafe", "unsafe"),
               ("no consent", "no_consent")]


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


def build(page, demo: gr.Blocks) -> None:
    claims = Claims()
    def queue(rating: str, adapter: str, since: str, reviewed: str, request: gr.Request):
        """The first page of answers to review, thumbs-down first by default."""
        return queue_page(rating, adapter, since, reviewed, None, 0, request)

    def next_page(rating: str, adapter: str, since: str, reviewed: str, cursor: dict,
                  request: gr.Request):
        """The next page of the queue loaded last (in this session)."""
        if not cursor or not cursor.get("next"):
            raise gr.Error("This is the last page; load the queue again.")
        return queue_page(rating, adapter, since, reviewed, cursor["next"], cursor["shown"],
                          request)

    def queue_page(rating, adapter, since, reviewed, after, shown, request):
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
                  r["adapter_id"] or review.BASE, r["created_at"][:16].replace("T", " "),
                  r["content"][:120]] for r in rows]
        count = (f"{len(rows)} answers" if not shown
                 else f"answers {shown + 1} to {shown + len(rows)}")
        if result.next:
            count += f"; more after these (Next {PAGE})"
        cursor = {"next": result.next, "shown": shown + len(rows)}
        return table, [r["id"] for r in rows], count, cursor

    def show_answer(message_id: str, request: gr.Request):
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

    def save_review(message_id: str, score: int | None, correction: str, flags: list[str],
                    request: gr.Request) -> str:
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

    def versions(request: gr.Request):
        page.user(request, "curator")
        names = page.service.model_names()
        with open_db(page.home) as db:  # the newest versions; any id can still be typed in the API
            ids = [a["id"] for a in adapters.page(db, limit=50).rows]
        return (gr.Dropdown(choices=["any", review.BASE, *ids]),
                gr.Dropdown(choices=names, value=names[0]),
                gr.Dropdown(choices=names, value=names[1] if len(names) > 1 else names[0]))

    def start_both(prompt: str, model_a: str, model_b: str, request: gr.Request):
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

    def compare(prompt: str, model_a: str, model_b: str, request: gr.Request) -> dict:
        """Both versions answer the same prompt (greedy), in a conversation of the curator's.
        Returns both texts and the ids that `pick` takes."""
        first, second = start_both(prompt, model_a, model_b, request)
        return {"prompt_id": first.user_message_id, "answer_a": first.id,
                "answer_b": second.id, "text_a": "".join(first), "text_b": "".join(second)}

    def pick(prompt_id: str, answer_a: str, answer_b: str, winner: str,
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

    # ---- layout and events ----------------------------------------------------------------
    ids, picked, pair, cursor = gr.State([]), gr.State(""), gr.State({}), gr.State({})
    row = gr.State(-1)  # the row of the answer open for review
    with gr.Tabs():
        with gr.Tab("Review queue"):
            with gr.Row():
                rating = gr.Dropdown(["any", "down", "up", "unrated"], value="any",
                                     label="Rating", elem_id="filter-rating")
                adapter = gr.Dropdown(["any", review.BASE], value="any", label="Adapter",
                                      elem_id="filter-adapter")
                since = gr.Textbox(label="Since (YYYY-MM-DD)", elem_id="filter-since")
                reviewed = gr.Dropdown(["any", "no", "yes"], value="no", label="Reviewed",
                                       elem_id="filter-reviewed")
                load = gr.Button("Load queue", variant="primary", elem_id="load-queue")
            with gr.Row():
                count = gr.Markdown(elem_id="queue-count")
                more = gr.Button(f"Next {PAGE}", interactive=False, elem_id="queue-next")
            with gr.Row():
                previous_btn = gr.Button("◂ Previous answer (k)", size="sm",
                                         elem_id="review-previous")
                next_btn = gr.Button("Next answer (j) ▸", size="sm", elem_id="review-next")
                gr.Markdown("Keys: **j** / **k** next / previous · **1**-**5** score · **e** "
                            "edit the correction (Esc leaves it) · **s** save and open the next",
                            elem_id="review-keys")
            table = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True, visible=False,
                                 column_widths=["9%", "7%", "9%", "15%", "15%", "45%"],
                                 elem_id="queue")
            with gr.Row():
                conversation = gr.Chatbot(label="Conversation up to the answer", height=360,
                                          elem_id="review-chat")
                with gr.Column():
                    about = gr.Markdown()
                    score = gr.Radio([1, 2, 3, 4, 5], label="Score", elem_id="score")
                    correction = gr.Textbox(label="Correction (kept beside the original; "
                                                  "it starts as the answer: edit it)",
                                            lines=4, elem_id="correction")
                    changes = gr.HTML(elem_id="correction-diff")
                    flags = gr.CheckboxGroup(FLAG_LABELS, label="Keep out of training",
                                             elem_id="flags")
                    save = gr.Button("Save review", variant="primary", elem_id="save-review",
                                     interactive=False)
                    saved = gr.Markdown(elem_id="review-status")
        with gr.Tab("Side by side"):
            gr.Markdown("Pick two versions to compare. Their answers come back as **1** and "
                        "**2** in a random order; which version wrote which is shown only "
                        "after your pick, so the names cannot sway it.")
            prompt = gr.Textbox(label="Prompt", elem_id="compare-prompt")
            with gr.Row():
                model_a = gr.Dropdown(label="A version", elem_id="version-a")
                model_b = gr.Dropdown(label="Another version", elem_id="version-b")
                go = gr.Button("Answer with both", variant="primary", elem_id="compare")
            with gr.Row():
                answer_1 = gr.Textbox(label="Answer 1", lines=8, interactive=False,
                                      elem_id="answer-1")
                answer_2 = gr.Textbox(label="Answer 2", lines=8, interactive=False,
                                      elem_id="answer-2")
            why = gr.Textbox(label="Why (optional)", elem_id="pick-reason")
            with gr.Row():
                pick_1 = gr.Button("1 is better", elem_id="pick-1", interactive=False)
                pick_tie = gr.Button("Tie", elem_id="pick-tie", interactive=False)
                pick_bad = gr.Button("Both bad", elem_id="pick-both-bad", interactive=False)
                pick_2 = gr.Button("2 is better", elem_id="pick-2", interactive=False)
            picked_note = gr.Markdown(elem_id="pick-status")

    # ---- the page's own events: they return {component: value}. Loading a queue empties
    # the review form (it belonged to the answer shown before, and must never be saved onto
    # it by mistake); a mistake is a line beside the filters, not "Error" over the table.
    form = [conversation, picked, score, correction, flags, about, saved, save, changes, row]

    def empty_form() -> dict:
        return {conversation: [], picked: "", score: None, correction: "", flags: [],
                about: "", saved: "", save: gr.Button(interactive=False), changes: ""}

    def open_answer(message_id: str, request: gr.Request) -> dict:
        """Show an answer for review, and claim it: for a few minutes, Next and Save skip it
        on other curators' pages."""
        user = page.user(request, "curator")
        shown = dict(zip(form[:6], show_answer(message_id, request)))
        original = shown[conversation][-1]["content"]
        with open_db(page.home) as db:
            asked = review.asker_feedback(db, message_id)
        thumbs = {"up": "👍", "down": "👎"}.get(asked.get("rating"), "no thumbs")
        said = ", ".join(asked.get("reasons") or [])
        comment = f' "{asked["comment"]}"' if asked.get("comment") else ""
        shown[about] = (f"{shown[about]} · asked by **{asked.get('asker', '?')}**: {thumbs}"
                        f"{' (' + said + ')' if said else ''}{comment}")
        holder = claims.take(message_id, user["name"])
        if holder != user["name"]:
            shown[about] += f" · ⚠️ **{holder}** is reviewing this one now"
        shown[correction] = shown[correction] or original  # edit the answer, not a blank box
        return {**shown, saved: "", save: gr.Button(interactive=True),
                changes: diff_html(original, shown[correction])}

    def next_free(answer_ids: list[str], after: int, user: dict) -> int | None:
        """The first answer after position `after` that no other curator has claimed."""
        for at in range(after + 1, len(answer_ids)):
            if claims.holder(answer_ids[at]) in (None, user["name"]):
                return at
        return None

    def step(answer_ids: list[str], at: float | None, by: int, request: gr.Request):
        """Open the next (by=1) or previous (by=-1) answer of the loaded page."""
        user = page.user(request, "curator")
        here = -1 if at is None else int(at)
        if by > 0:
            target = next_free(answer_ids, here, user)
        else:
            target = here - 1 if here > 0 else None
        if target is None or target >= len(answer_ids):
            return {saved: "No more answers on this page." if by > 0 else "This is the first."}
        return {**open_answer(answer_ids[target], request), row: target}

    def next_answer(answer_ids: list[str], at: float | None, request: gr.Request):
        return step(answer_ids, at, 1, request)

    def previous_answer(answer_ids: list[str], at: float | None, request: gr.Request):
        return step(answer_ids, at, -1, request)

    def show_changes(message_id: str, text: str, request: gr.Request):
        page.user(request, "curator")
        if not message_id:
            return ""
        with open_db(page.home) as db:
            answer = store.get_message(db, message_id)
        return diff_html(answer["content"] if answer else "", text)

    def queue_in_page(result) -> dict:
        try:
            table_rows, answer_ids, counted, at = result()
        except gr.Error as exc:
            return {count: f"⚠️ {exc.message}", **empty_form()}
        with open_db(page.home) as db:
            states = review.queue_counts(db)
        summary = (f"{states['down']} 👎 · {states['unrated']} unrated · {states['up']} 👍 · "
                   f"{states['reviewed']} reviewed")
        return {table: gr.Dataframe(value=table_rows, visible=True), ids: answer_ids,
                count: f"{counted} · in all: {summary}",
                row: -1,
                cursor: at, more: gr.Button(interactive=bool(at.get("next"))), **empty_form()}

    def load_in_page(rating, adapter, since, reviewed, request: gr.Request):
        return queue_in_page(lambda: queue(rating, adapter, since, reviewed, request))

    def next_in_page(rating, adapter, since, reviewed, at, request: gr.Request):
        return queue_in_page(lambda: next_page(rating, adapter, since, reviewed, at, request))

    def select_in_page(answer_ids: list[str], event: gr.SelectData, request: gr.Request):
        index = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
        return {**open_answer(answer_ids[index], request), row: index}

    def save_in_page(message_id, chosen_score, text, chosen_flags, answer_ids, request: gr.Request):
        """Save, then open the next answer of the loaded page (the review flow moves on)."""
        try:
            save_review(message_id, chosen_score, text, chosen_flags, request)
        except gr.Error as exc:
            return {saved: f"⚠️ {exc.message}"}
        claims.release(message_id)
        user = page.user(request, "curator")
        here = answer_ids.index(message_id) if message_id in answer_ids else len(answer_ids)
        at = next_free(answer_ids, here, user)
        if at is None:
            return {**empty_form(), saved: "Saved. That was the last answer of this page."}
        return {**open_answer(answer_ids[at], request), saved: "Saved; here is the next one.",
                row: at}

    filters = [rating, adapter, since, reviewed]
    paged = [table, ids, count, cursor, more, *form]
    load.click(load_in_page, filters, paged, api_visibility="private")
    more.click(next_in_page, [*filters, cursor], paged, api_visibility="private")
    table.select(select_in_page, [ids], form, api_visibility="private")
    save.click(save_in_page, [picked, score, correction, flags, ids], form,
               api_visibility="private")
    next_btn.click(next_answer, [ids, row], form, api_visibility="private")
    previous_btn.click(previous_answer, [ids, row], form, api_visibility="private")
    correction.blur(show_changes, [picked, correction], [changes], api_visibility="private",
                    show_progress="hidden")
    # The API keeps its own outputs, and errors are errors there.
    api_load, api_next = gr.Button(visible=False), gr.Button(visible=False)
    api_load.click(queue, filters, [table, ids, count, cursor], api_name="review_queue")
    api_next.click(next_page, [*filters, cursor], [table, ids, count, cursor],
                   api_name="review_queue_next")
    gr.api(show_answer, api_name="show_answer")
    gr.api(save_review, api_name="save_review")
    gr.api(compare, api_name="compare")
    gr.api(pick, api_name="pick")

    picks = [pick_1, pick_tie, pick_bad, pick_2]

    def answer_both(prompt: str, model_a: str, model_b: str, request: gr.Request):
        """Blind, as arenas do: the two answers stream side by side as 1 and 2, in a random
        order; `pair` remembers which is which until the pick reveals it."""
        try:
            first, second = start_both(prompt, model_a, model_b, request)
        except gr.Error as exc:
            yield {picked_note: f"⚠️ {exc.message}"}
            return
        swap = secrets.randbelow(2) == 1  # which version is shown as 1
        shown = [(second, model_b), (first, model_a)] if swap else [(first, model_a),
                                                                    (second, model_b)]
        hidden = {"prompt_id": first.user_message_id, "answer_a": first.id,
                  "answer_b": second.id, "shown_first": "b" if swap else "a",
                  "names": [name for _, name in shown]}
        off = {button: gr.Button(interactive=False) for button in picks}
        yield {answer_1: "", answer_2: "", pair: {}, picked_note: "", why: "", **off}
        texts = ["", ""]
        for index, piece in _interleave(shown[0][0], shown[1][0]):
            texts[index] += piece
            yield {answer_1: texts[0], answer_2: texts[1]}
        yield {pair: hidden, **{button: gr.Button(interactive=True) for button in picks}}

    def picker(choice: str):
        def choose(hidden: dict, reason: str, request: gr.Request):
            if not hidden:
                return {picked_note: "Answer with both versions first."}
            # choice is "1", "2", "tie" or "both_bad"; 1 is answer a unless the order swapped
            winner = choice
            if choice in ("1", "2"):
                winner = "a" if (choice == "1") == (hidden["shown_first"] == "a") else "b"
            try:
                note = pick(hidden["prompt_id"], hidden["answer_a"], hidden["answer_b"],
                            winner, request, reason=reason, shown_first=hidden["shown_first"])
            except gr.Error as exc:
                return {picked_note: f"⚠️ {exc.message}"}
            one, two = hidden["names"]
            verdict = {"1": "1 is better", "2": "2 is better", "tie": "a tie",
                       "both_bad": "both bad"}[choice]
            return {picked_note: f"{note.split(':')[0]}: {verdict}. Answer 1 was **{one}**, "
                                 f"answer 2 was **{two}**.", pair: {},
                    **{button: gr.Button(interactive=False) for button in picks}}
        return choose
    go.click(answer_both, [prompt, model_a, model_b],
             [answer_1, answer_2, pair, picked_note, why, *picks], api_visibility="private",
             show_progress="hidden")
    for button, choice in ((pick_1, "1"), (pick_2, "2"), (pick_tie, "tie"),
                           (pick_bad, "both_bad")):
        button.click(picker(choice), [pair, why], [picked_note, pair, *picks],
                     api_visibility="private")

    def on_load(request: gr.Request):
        if page.auth.user_named(getattr(request, "username", None))["role"] == "user":
            return gr.Dropdown(), gr.Dropdown(), gr.Dropdown()
        return versions(request)
    demo.load(on_load, None, [adapter, model_a, model_b], api_visibility="private")


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
