"""The Chat tab's own events: what the page's buttons, the chat's clicks, thumbs and edits,
the conversation list and the page's script (page_keys.js) do. They build on the tab's API
(ui_chat_api.py) and return {component: value}, so each says only what it changes.
"""

import json

import gradio as gr

from assistant.ui_chat_api import (
    DOWN_REASONS,
    UP_REASONS,
    branch,
    delete_conversation,
    edit,
    new_session,
    rate,
    regenerate,
    rename_conversation,
    restore_conversation,
    send,
    show_conversation,
    stop,
)
from assistant.ui_chat_view import ChatView, form_for, list_view, listing, shown
from storage import chat as store
from storage import open_db


def page_stream(view: ChatView, answers, user: dict, can_retry: bool = False):
    """A streaming handler, for the page: Send is off while it streams. `can_retry`: a
    refusal (busy, rate limited) offers Retry, which sends the box's text again."""
    first = True
    try:
        for history, session, _, last_answer in answers:
            update = {view.chatbot: history, view.state: session, view.last: last_answer}
            if first:  # the box empties once: a draft typed while it streams stays
                update.update({**form_for(view, {}), view.box: "", view.notice: "",
                               view.undo_btn: gr.Button(visible=False),
                               view.send_btn: gr.Button(interactive=False),
                               view.retry_btn: gr.Button(visible=False)})
                first = False
            yield update
    except gr.Error as exc:  # the draft stays in the box; Retry when a retry can help
        yield {view.notice: f"⚠️ {exc.message}", view.send_btn: gr.Button(interactive=True),
               view.retry_btn: gr.Button(visible=can_retry and getattr(exc, "retry", False))}
        return
    yield {view.chatbot: shown(view, user, history, session), **form_for(view, session),
           view.send_btn: gr.Button(interactive=True), view.open_id: session["conversation_id"],
           **listing(view, user, session["conversation_id"])}


def send_in_page(view: ChatView, text, session, system_prompt, temperature, max_tokens,
                 request: gr.Request):
    answers = send(view, text, session, system_prompt, temperature, max_tokens, request)
    yield from page_stream(view, answers, view.page.user(request), can_retry=True)


def regenerate_in_page(view: ChatView, session, temperature, max_tokens, request: gr.Request):
    yield from page_stream(view, regenerate(view, session, temperature, max_tokens, request),
                           view.page.user(request))


def edit_in_page(view: ChatView, text, session, temperature, max_tokens, request: gr.Request):
    yield from page_stream(view, edit(view, text, session, temperature, max_tokens, request),
                           view.page.user(request))


def edit_in_place(view: ChatView, session, temperature, max_tokens, event: gr.EditData,
                  request: gr.Request):
    """The chat's own edit action on one of your messages: the new text starts a new
    branch from there, as Send edited message does. Refused, the chat shows the branch
    as it was (Gradio has already drawn the new text)."""
    user = view.page.user(request)
    index = event.index if isinstance(event.index, int) else event.index[0]
    if index >= len(session["ids"]):
        return
    shown_before = branch(view.page, session["leaf_id"])[0]
    restored = {view.chatbot: shown(view, user, shown_before, session)}
    session = {**session, "selected": session["ids"][index]}
    answers = edit(view, event.value, session, temperature, max_tokens, request)
    for update in page_stream(view, answers, user):
        yield {**restored, **update} if view.notice in update and view.chatbot not in update \
            else update


def stop_in_page(view: ChatView, session: dict, request: gr.Request):
    history, session, last_answer = stop(view, session, request)
    return {view.chatbot: shown(view, view.page.user(request), history, session),
            view.state: session, view.last: last_answer,
            view.send_btn: gr.Button(interactive=True), **form_for(view, session)}


def select(view: ChatView, session: dict, event: gr.SelectData, request: gr.Request):
    """Clicking a message selects it: for branching, moving between siblings, rating."""
    user = view.page.user(request)
    if request.session_hash in view.running:  # the page's ids are the branch before it
        return {view.where: "Wait for the answer to finish, then click a message."}
    index = event.index if isinstance(event.index, int) else event.index[0]
    if not session["ids"] or index >= len(session["ids"]):
        return {}
    message = view.page.own_message(user, session["ids"][index])
    session = {**session, "selected": message["id"]}
    return {view.state: session, view.where: _where(view, message),
            **form_for(view, session, on_answer=message["role"] == "assistant"),
            view.edit_box: message["content"] if message["role"] == "user" else ""}


def _where(view: ChatView, message: dict) -> str:
    with open_db(view.page.home) as db:
        ids = store.siblings(db, message["id"])
    kind = "answer" if message["role"] == "assistant" else "message"
    return f"Selected {kind} {ids.index(message['id']) + 1} of {len(ids)}"


def move(view: ChatView, session: dict, step: int, request: gr.Request):
    """Show the previous / next sibling of the selected message, and its branch."""
    user = view.page.user(request)
    if not session.get("selected"):
        return {view.where: "Click a message in the chat first, then move between its versions."}
    message = view.page.own_message(user, session["selected"])
    with open_db(view.page.home) as db:
        ids = store.siblings(db, message["id"])
        target = ids[max(0, min(len(ids) - 1, ids.index(message["id"]) + step))]
        leaf = store.latest_leaf(db, target)
        target_row = store.get_message(db, target)
    history, ids_shown = branch(view.page, leaf)
    session = {**session, "leaf_id": leaf, "ids": ids_shown, "selected": target}
    return {view.chatbot: shown(view, user, history, session), view.state: session,
            view.where: _where(view, target_row),
            **form_for(view, session, on_answer=target_row["role"] == "assistant")}


def version_option(view: ChatView, session: dict, event: gr.SelectData, request: gr.Request):
    """‹ or › on the last answer: its previous or next version."""
    step = {"previous": -1, "next": 1}.get(event.value)
    if step is None or not session.get("ids"):
        return {}
    return move(view, {**session, "selected": session["ids"][-1]}, step, request)


def previous_sibling(view: ChatView, session: dict, request: gr.Request):
    return move(view, session, -1, request)


def next_sibling(view: ChatView, session: dict, request: gr.Request):
    return move(view, session, 1, request)


def save_rating(view: ChatView, session, target, chosen, picked_reasons, text, request: gr.Request):
    """Save the form onto the answer it was opened for (`form_target`)."""
    if not target:
        return {view.rate_note: "Send a message first: there is no answer to rate."}
    if not chosen:
        return {view.rate_note: "Choose 👍 or 👎 first."}
    try:
        rate(view, target, chosen, picked_reasons, text, request)
    except gr.Error as exc:
        return {view.rate_note: f"⚠️ {exc.message}"}
    user = view.page.user(request)
    history, _ = branch(view.page, session["leaf_id"])
    return {view.rate_note: f"Saved: {'👍' if chosen == 'up' else '👎'} "
                            f"{', '.join(picked_reasons or [])}".strip(),
            view.chatbot: shown(view, user, history, session)}


def on_like(view: ChatView, session: dict, data: gr.LikeData, request: gr.Request):
    """A thumb on the message itself: saved at once, or when a streaming answer is stored;
    it opens the reasons and comment for that answer."""
    ids = (session or {}).get("ids", [])
    if data.liked not in (True, False):  # a thumb clicked again: Gradio unselects it
        return {view.notice: "Your rating stays; choose the other thumb to change it."}
    rating = "up" if data.liked else "down"
    entry = view.running.get(request.session_hash)
    if entry is not None and entry.user_id == view.page.user(request)["id"]:
        # While an answer streams, the ids on the page are the branch shown before it (a
        # regenerated answer sits where its sibling was): only the streaming one is rated.
        if data.index != entry.position:
            return {view.notice: "Rate it when the answer on screen has finished."}
        entry.thumb = rating
        return {view.rate_note: "Saved when the answer is finished."}
    if not isinstance(data.index, int) or data.index >= len(ids):
        return {view.notice: "That answer is not stored yet; rate it when it has finished."}
    rate(view, ids[data.index], rating, request=request)
    target = ids[data.index]
    choices = UP_REASONS if rating == "up" else DOWN_REASONS
    # The reasons and comment open on the answer itself (page_keys.js); the panel below
    # holds the same form, for the keyboard and for answers rated earlier.
    return {**form_for(view, {**session, "selected": target}), view.thumb: rating,
            view.reasons: gr.CheckboxGroup(choices, value=[]),
            view.rate_note: f"Saved {'👍' if rating == 'up' else '👎'}: add reasons or a comment?"}


def new_in_page(view: ChatView, request: gr.Request):
    user = view.page.user(request)
    session = new_session()
    return {view.chatbot: [], view.state: session, view.last: {}, view.system: "",
            view.notice: "", view.open_id: None, view.undo_btn: gr.Button(visible=False),
            **listing(view, user), **form_for(view, session)}


def open_in_page(view: ChatView, conversation_id: str, request: gr.Request):
    user = view.page.user(request)
    try:
        history, session, system_prompt = show_conversation(view, conversation_id, request)
    except gr.Error:  # deleted meanwhile, or a stale id kept by the browser
        return {**new_in_page(view, request), view.open_id: None}
    # The list stays as it is (a search's results too), with this one marked.
    return {view.chatbot: shown(view, user, history, session), view.state: session,
            view.system: system_prompt, view.notice: "",
            view.open_id: session["conversation_id"], **form_for(view, session),
            view.conversations: gr.Radio(value=session["conversation_id"]),
            view.undo_btn: gr.Button(visible=False)}


def rename_in_page(view: ChatView, session: dict, title: str, request: gr.Request,
                   conversation_id: str | None = None):
    """Rename the open conversation (the Rename button), or `conversation_id`."""
    conversation_id = conversation_id or session.get("conversation_id")
    if not conversation_id:
        return {view.title_note: "Open a conversation first."}
    if not (title or "").strip():
        return {view.title_note: "Write the new title first."}
    try:
        rename_conversation(view, conversation_id, title, request)
    except gr.Error as exc:
        return {view.title_note: f"⚠️ {exc.message}"}
    user = view.page.user(request)
    return {**listing(view, user, session.get("conversation_id")), view.title_box: "",
            view.title_note: ""}


def rate_inline(view: ChatView, asked: str, session: dict, request: gr.Request):
    """Reasons and a comment given on the answer itself, after its thumb (page_keys.js
    writes {"place", "rating", "reasons", "comment"} as JSON)."""
    try:
        wanted = json.loads(asked)
        place, rating = int(wanted["place"]), wanted["rating"]
        picked = [str(reason) for reason in wanted.get("reasons", [])]
        said = str(wanted.get("comment", ""))
    except (ValueError, KeyError, TypeError):
        return {}
    answer = _answer_at(view, session, place)
    if answer is None or rating not in ("up", "down"):
        saved = {view.rate_note: "That answer is not on screen any more."}
    else:
        saved = save_rating(view, session, answer, rating, picked, said, request)
    # The form on the answer shows this reply (tagged with its ask, so that the same
    # reply twice is still news to it).
    return {**saved, view.rating_reply: f"{wanted.get('at')}\t{saved[view.rate_note]}"}


def rename_listed(view: ChatView, asked: str, session: dict, request: gr.Request):
    """A title edited in place in the list: page_keys.js writes "<id>\t<time>\t<title>"
    (the time, so that the same title asked twice is two asks)."""
    conversation_id, _, rest = (asked or "").partition("\t")
    if not conversation_id:
        return {}
    return rename_in_page(view, session, rest.partition("\t")[2], request, conversation_id)


def delete_in_page(view: ChatView, session: dict, request: gr.Request):
    if not session.get("conversation_id"):
        return {view.title_note: "Open a conversation first."}
    try:
        delete_conversation(view, session["conversation_id"], request)
    except gr.Error as exc:  # already deleted (a second click, another tab)
        return {view.title_note: f"⚠️ {exc.message}"}
    return {**new_in_page(view, request), view.deleted: session["conversation_id"],
            view.notice: "Conversation deleted.", view.undo_btn: gr.Button(visible=True)}


def undo_in_page(view: ChatView, conversation_id: str, request: gr.Request):
    try:
        restore_conversation(view, conversation_id, request)
    except gr.Error as exc:
        return {view.notice: f"⚠️ {exc.message}", view.undo_btn: gr.Button(visible=False)}
    return {**open_in_page(view, conversation_id, request),
            **listing(view, view.page.user(request), conversation_id)}


def save_system_prompt(view: ChatView, session: dict, system_prompt: str,
                       request: gr.Request) -> str:
    user = view.page.user(request)
    if not session.get("conversation_id"):
        return "Used when you send the first message."
    view.page.own_conversation(user, session["conversation_id"])
    with open_db(view.page.home) as db:
        store.update_conversation(db, session["conversation_id"],
                                  system_prompt=system_prompt or "")
    return "Saved: it applies to the next answers."


def _answer_at(view: ChatView, session: dict, place: int) -> str | None:
    """The id of the answer at `place` among the answers on screen (the page's script
    names an answer by its place), or None when there is no such answer any more."""
    with open_db(view.page.home) as db:
        details = store.answer_details(db, session.get("ids") or [])
    return details[place]["id"] if 0 <= place < len(details) else None


def answer_details(view: ChatView, session: dict, request: gr.Request) -> str:
    """Each answer shown, as JSON for the page's script (page_keys.js): its place among
    its versions (`at` of `of`, drawn as ‹ 2/3 › on it) and, for curators and admins,
    the version that wrote it (its hover title)."""
    curator = view.page.user(request)["role"] in ("curator", "admin")
    with open_db(view.page.home) as db:
        details = store.answer_details(db, session.get("ids") or [])
    return json.dumps([{"at": d["at"], "of": d["of"],
                        **({"version": d["version"]} if curator else {})}
                       for d in details])


def move_answer(view: ChatView, asked: str, session: dict, request: gr.Request):
    """‹ or › on an answer before the last (page_keys.js writes "<its place>:<step>")."""
    try:
        place, step = (int(part) for part in asked.split(":")[:2])
    except ValueError:
        return {}
    answer = _answer_at(view, session, place)
    if answer is None or step not in (-1, 1):
        return {}
    return move(view, {**session, "selected": answer}, step, request)


def on_load(view: ChatView, conversation_id: str | None, request: gr.Request):
    """The list of conversations, and the one open before a reload (kept by the browser)."""
    user = view.page.user(request)
    if conversation_id:
        opened = open_in_page(view, conversation_id, request)
        return {**opened, **listing(view, user, opened[view.state]["conversation_id"])}
    return listing(view, user)


def search_in_page(view: ChatView, words: str, session: dict, request: gr.Request):
    return list_view(view, view.page.user(request), session.get("conversation_id"),
                     search=words.strip())


def more_in_page(view: ChatView, held: dict, session: dict, request: gr.Request):
    if not held.get("next"):
        return {view.more_btn: gr.Button(visible=False)}
    return list_view(view, view.page.user(request), session.get("conversation_id"),
                     search=held["search"], held=held)
