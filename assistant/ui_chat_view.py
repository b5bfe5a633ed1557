"""The Chat tab's components (`ChatView`) and the parts of it that several events redraw:
the chat with its thumbs and versions, the rating form, and the conversation list.
"""

from dataclasses import dataclass

import gradio as gr

from assistant.ui_chat_api import (
    DOWN_REASONS,
    UP_REASONS,
    ChatTab,
    conversation_list,
    own_thumbs,
)
from storage import chat as store
from storage import open_db


@dataclass(kw_only=True)
class ChatView(ChatTab):
    """The components the events read and change (built by ui_chat.build)."""
    state: gr.State
    form_target: gr.State
    deleted: gr.State
    held_list: gr.State
    open_id: gr.BrowserState
    find: gr.Textbox
    conversations: gr.Radio
    more_btn: gr.Button
    title_box: gr.Textbox
    title_note: gr.Markdown
    rename_btn: gr.Button
    delete_btn: gr.Button
    system: gr.Textbox
    chatbot: gr.Chatbot
    box: gr.Textbox
    send_btn: gr.Button
    notice: gr.Markdown
    undo_btn: gr.Button
    retry_btn: gr.Button
    regen_btn: gr.Button
    where: gr.Markdown
    panel: gr.Accordion
    thumb: gr.Radio
    reasons: gr.CheckboxGroup
    comment: gr.Textbox
    rate_btn: gr.Button
    rate_note: gr.Markdown
    edit_box: gr.Textbox
    last: gr.JSON
    rating_reply: gr.Textbox


# A person's mistake
# (an empty box, nothing to regenerate, an empty title) is a line beside what caused it:
# a gr.Error would cover the chat and the message box with "Error" badges until dismissed.
# The rating form belongs to one answer: whatever changes the answer in view empties it,
# so a judgement can never land on an answer it was not given to.
def form_for(view: ChatView, session: dict, on_answer: bool = True) -> dict:
    target = rating_target(session) if on_answer else None
    return {view.thumb: None,
            view.reasons: gr.CheckboxGroup(choices=UP_REASONS + DOWN_REASONS, value=[]),
            view.comment: "", view.rate_note: "", view.form_target: target,
            view.regen_btn: gr.Button(interactive=bool(session.get("ids"))),
            view.rename_btn: gr.Button(interactive=bool(session.get("conversation_id"))),
            view.delete_btn: gr.Button(interactive=bool(session.get("conversation_id"))),
            view.rate_btn: gr.Button(interactive=target is not None)}


def shown(view: ChatView, user: dict, history: list, session: dict) -> gr.Chatbot:
    """The chat with the thumbs you gave, and ‹ 2/3 › on the last answer when it has
    other versions (Gradio shows a message's options under the last answer alone)."""
    ids = session.get("ids", [])
    if history and ids and history[-1]["role"] == "assistant":
        with open_db(view.page.home) as db:
            versions = store.siblings(db, ids[-1])
        if len(versions) > 1:
            at = versions.index(ids[-1]) + 1
            history = [*history[:-1], {**history[-1], "options": [
                {"value": "previous", "label": "‹"},
                {"value": "here", "label": f"{at}/{len(versions)}"},
                {"value": "next", "label": "›"}]}]
    return gr.Chatbot(value=history, feedback_value=own_thumbs(view.page, user, ids, history))


def list_view(view: ChatView, user: dict, selected: str | None = None, search: str = "",
              held: dict | None = None) -> dict:
    """The list (`_conversations`), what it holds, and Older while there is more."""
    radio, held = conversation_list(view.page, user, selected, search=search, held=held)
    return {view.conversations: radio, view.held_list: held,
            view.more_btn: gr.Button(visible=bool(held["next"]))}


def listing(view: ChatView, user: dict, selected: str | None = None) -> dict:
    """The list from its first page, unfiltered (a new message reorders it)."""
    return {**list_view(view, user, selected), view.find: ""}


def rating_target(session: dict) -> str | None:
    """The answer the rating form is for: the selected message if it is an answer, else the
    last answer shown."""
    ids = session.get("ids") or []
    if session.get("selected"):
        return session["selected"]
    return ids[-1] if ids else None
