"""The Chat tab's API, which the page's own events (ui_chat_page.py) build on: send, stop,
regenerate and edit stream an answer in the session's open conversation (each makes a branch
in the message tree, nothing is overwritten); rate, and a conversation's open, rename, delete
and restore by its id. Each is also an endpoint for `gradio_client`: /send, /stop,
/regenerate, /edit, /new_conversation, /rate, /open_conversation, /rename_conversation,
/delete_conversation, /restore_conversation. Each finds the caller and checks that what it
touches is theirs.
"""

import logging
from dataclasses import dataclass, field
from typing import TypedDict

import gradio as gr

from assistant.chat import Turn
from assistant.inference import GenerationParams, RequestError
from assistant.ui import Page
from storage import chat as store
from storage import open_db

log = logging.getLogger("flywheel.ui")

UP_REASONS = ["accurate", "followed instructions", "clear", "helpful tone"]
CONVERSATIONS_SHOWN = 200  # the most recently active; older ones are kept, not listed
DOWN_REASONS = ["wrong", "didn't follow instructions", "refused wrongly", "too long", "unsafe",
                "other"]


class ChatSession(TypedDict):
    """What the page keeps for one browser tab between two events (in a gr.State)."""
    conversation_id: str | None  # the conversation on screen; None: a new chat
    leaf_id: str | None          # the last message of the branch on screen
    ids: list[str]               # the stored id of each message shown, in order
    selected: str | None         # the message clicked in the chat, for branching and rating


def new_session() -> ChatSession:
    """A new chat: nothing on screen yet."""
    return {"conversation_id": None, "leaf_id": None, "ids": [], "selected": None}


def branch(page: Page, leaf_id: str | None) -> tuple[list[dict], list[str]]:
    """The chat from its first turn down to `leaf_id`, as the Chatbot shows it."""
    if leaf_id is None:
        return [], []
    with open_db(page.home) as db:
        path = [m for m in store.thread(db, leaf_id) if m["role"] != "system"]
    return [{"role": m["role"], "content": m["content"]} for m in path], [m["id"] for m in path]


def last_answer(turn: Turn) -> dict:
    """What the page's hidden `last` box shows of an answer (tests and programs read it)."""
    result = turn.result
    return {"conversation_id": turn.conversation_id, "message_id": turn.id,
            "adapter_id": result.adapter_id if result else turn.adapter_id,
            "finish_reason": result.finish_reason if result else None}


def conversation_list(page: Page, user: dict, selected: str | None = None, search: str = "",
                      held: dict | None = None) -> tuple[gr.Radio, dict]:
    """The user's conversations, newest activity first, that hold `search` in the title or a
    message: the first page, or the next one after those `held` (the list grows a page at a
    time). Returns the list and what it holds now (its search, its choices, where the next
    page starts)."""
    after = held["next"] if held else None
    with open_db(page.home) as db:
        listed = store.list_conversations(db, user["id"], limit=CONVERSATIONS_SHOWN,
                                          after=after, search=search)
    choices = [*(tuple(c) for c in (held or {}).get("shown", [])),
               *((r["title"] or "Untitled", r["id"]) for r in listed.rows)]
    if selected not in [id_ for _, id_ in choices]:
        selected = None
    label = ("Your conversations" if choices or not search
             else "No conversation holds those words")
    return (gr.Radio(choices=choices, value=selected, label=label),
            {"search": search, "shown": choices, "next": listed.next})


def own_thumbs(page: Page, user: dict, ids: list[str], history: list[dict]) -> list[str | None]:
    """The caller's saved thumbs on each answer shown, as the Chatbot's `feedback_value`."""
    with open_db(page.home) as db:
        mine = store.own_ratings(db, ids, user["id"])
    marks = {"up": "Like", "down": "Dislike"}
    return [marks.get(mine.get(i)) for i, m in zip(ids, history) if m["role"] == "assistant"]


@dataclass
class _Streaming:
    """An answer streaming to one page (by session hash)."""
    turn: Turn
    session: dict
    user_id: int | None
    position: int               # its index in the chat on screen
    thumb: str | None = None    # 'up'/'down' clicked while it streams, saved once stored


@dataclass
class ChatTab:
    """What the Chat tab's handlers share: the page, and the answer streaming to each browser
    tab (by session hash), which Stop, a thumb given while it streams, and a click wait on."""
    page: Page
    running: dict[str, _Streaming] = field(default_factory=dict)


def stream(chat: ChatTab, turn: Turn, session: dict, history: list, user: dict,
           request: gr.Request):
    """Show the answer as it grows; afterwards the branch ends at the stored answer."""
    session = {**session, "conversation_id": turn.conversation_id, "selected": None}
    history = history + [{"role": "assistant", "content": ""}]
    entry = chat.running[request.session_hash] = _Streaming(turn, session, user["id"],
                                                            len(history) - 1)
    yield history, session, "", {}  # the question shows at once, before the first token
    try:
        for piece in turn:
            history[-1]["content"] += piece
            yield history, session, "", {}
    except RequestError as exc:  # e.g. vLLM went away mid-answer: say what happened
        raise gr.Error(f"The model could not finish: {exc}") from None
    except Exception as exc:
        log.exception("chat failed")
        raise gr.Error(f"The model could not answer: {type(exc).__name__}") from None
    finally:
        turn.cancel()  # a no-op when finished; a closed page or Stop stops the model
        chat.running.pop(request.session_hash, None)
    if entry.thumb:  # 👍/👎 clicked while it streamed
        rate(chat, turn.id, entry.thumb, request=request)
    history, ids = branch(chat.page, turn.id)
    yield history, {**session, "leaf_id": turn.id, "ids": ids}, "", last_answer(turn)


def params(temperature, max_tokens) -> GenerationParams:
    """The page's sliders as the engine's settings (Gradio sends numbers as floats)."""
    return GenerationParams(temperature=float(temperature), max_tokens=int(max_tokens))


def send(chat: ChatTab, text: str, session: dict, system_prompt: str, temperature: float,
         max_tokens: int, request: gr.Request):
    """Send a message in the open conversation (or a new one) and stream the answer."""
    user = chat.page.user(request)
    text = (text or "").strip()
    if not text:
        raise gr.Error("Type a message first.")
    session = dict(session or new_session())
    if session["conversation_id"]:
        chat.page.own_conversation(user, session["conversation_id"])
    try:
        turn = chat.page.service.reply(session["conversation_id"], session["leaf_id"], text,
                                       params(temperature, max_tokens), user_id=user["id"],
                                       system_prompt=system_prompt)
    except RequestError as exc:
        raise _refusal(exc) from None
    history, _ = branch(chat.page, session["leaf_id"])
    yield from stream(chat, turn, session, history + [{"role": "user", "content": text}], user,
                      request)


def stop(chat: ChatTab, session: dict, request: gr.Request):
    """Stop this session's answer within one token; the partial answer is kept."""
    user = chat.page.user(request)
    entry = chat.running.get(request.session_hash)
    if entry is None or entry.user_id != user["id"]:  # only your own (a hash can leak)
        history, _ = branch(chat.page, session["leaf_id"])
        return history, session, {}
    chat.running.pop(request.session_hash, None)
    turn, session = entry.turn, entry.session
    turn.cancel()
    turn.wait(timeout=30)
    history, ids = branch(chat.page, turn.id)
    return history, {**session, "leaf_id": turn.id, "ids": ids}, last_answer(turn)


def regenerate(chat: ChatTab, session: dict, temperature: float, max_tokens: int,
               request: gr.Request):
    """A new answer to the selected answer's question (default: the last answer's),
    kept beside the earlier one as a sibling. A question left without an answer (the
    server stopped while answering it) gets its answer."""
    user = chat.page.user(request)
    target = session.get("selected") or (session["ids"][-1] if session["ids"] else None)
    if target is None:
        raise gr.Error("Nothing to regenerate yet: send a message first.")
    message = chat.page.own_message(user, target)
    question = message["parent_id"] if message["role"] == "assistant" else message["id"]
    try:
        turn = chat.page.service.regenerate(question, params(temperature, max_tokens),
                                            user_id=user["id"])
    except RequestError as exc:
        raise _refusal(exc) from None
    history, _ = branch(chat.page, question)
    yield from stream(chat, turn, session, history, user, request)


def edit(chat: ChatTab, text: str, session: dict, temperature: float, max_tokens: int,
         request: gr.Request):
    """Send a changed version of the selected user message: a new branch from there."""
    user = chat.page.user(request)
    if not session.get("selected"):
        raise gr.Error("Select one of your messages in the chat first.")
    original = chat.page.own_message(user, session["selected"])
    text = (text or "").strip()
    if original["role"] != "user" or not text:
        raise gr.Error("Select one of your messages and write its new text.")
    try:
        turn = chat.page.service.reply(original["conversation_id"], original["parent_id"],
                                       text, params(temperature, max_tokens),
                                       user_id=user["id"])
    except RequestError as exc:
        raise _refusal(exc) from None
    history, _ = branch(chat.page, original["parent_id"])
    yield from stream(chat, turn, session, history + [{"role": "user", "content": text}], user,
                      request)


def rate(chat: ChatTab, message_id: str, rating: str, reasons: list[str] | None = None,
         comment: str | None = None, request: gr.Request = None) -> str:
    """Rate an answer 'up' or 'down' by its message id, with optional reasons and a
    comment; a later rating replaces it."""
    user = chat.page.user(request)
    if chat.page.own_message(user, message_id, curators_too=True)["role"] != "assistant":
        raise gr.Error("Only answers can be rated.")
    allowed = UP_REASONS if rating == "up" else DOWN_REASONS
    if any(r not in allowed for r in reasons or []):
        raise gr.Error(f"Reasons for '{rating}' are: {', '.join(allowed)}.")
    try:
        chat.page.service.check_feedback(comment=comment)
        with open_db(chat.page.home) as db:
            store.record_feedback(db, message_id, rating, reasons=reasons or [],
                              comment=(comment or "").strip() or None,
                              rater_id=user["id"])
    except (KeyError, ValueError) as exc:  # RequestError is a ValueError
        raise gr.Error(str(exc)) from None
    return "ok"


def new_conversation(chat: ChatTab, request: gr.Request):
    user = chat.page.user(request)
    return [], new_session(), {}, conversation_list(chat.page, user)[0], ""


def show_conversation(chat: ChatTab, conversation_id: str, request: gr.Request):
    """Show a conversation of yours, at its most recent branch."""
    user = chat.page.user(request)
    if not conversation_id:
        return [], new_session(), ""
    conversation = chat.page.own_conversation(user, conversation_id)
    with open_db(chat.page.home) as db:
        last = store.last_message(db, conversation_id)
    history, ids = branch(chat.page, last)
    session = {**new_session(), "conversation_id": conversation_id, "leaf_id": last,
               "ids": ids}
    return history, session, conversation["system_prompt"] or ""


def read_conversation(chat: ChatTab, conversation_id: str, request: gr.Request) -> list[dict]:
    """The messages of one of your conversations, on its most recent branch."""
    return show_conversation(chat, conversation_id, request)[0]


def rename_conversation(chat: ChatTab, conversation_id: str, title: str,
                        request: gr.Request) -> str:
    """Give one of your conversations a new title."""
    user = chat.page.user(request)
    chat.page.own_conversation(user, conversation_id)
    try:
        with open_db(chat.page.home) as db:
            store.update_conversation(db, conversation_id, title=title or "")
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    return "ok"


def delete_conversation(chat: ChatTab, conversation_id: str, request: gr.Request) -> str:
    """Delete one of your conversations: gone from your list, the review queue and
    training (see storage.chat.delete_conversation); undo with /restore_conversation."""
    user = chat.page.user(request)
    chat.page.own_conversation(user, conversation_id)
    with open_db(chat.page.home) as db:
        store.delete_conversation(db, conversation_id)
    return "ok"


def restore_conversation(chat: ChatTab, conversation_id: str, request: gr.Request) -> str:
    """Undo the delete of one of your conversations (until the nightly prune)."""
    user = chat.page.user(request)
    with open_db(chat.page.home) as db:
        if not store.restore_conversation(db, conversation_id or "", user["id"]):
            raise gr.Error("Nothing to undo: that conversation is not in your deleted ones.")
    return "ok"


def _refusal(exc: RequestError) -> gr.Error:
    """The engine's or the throttle's refusal as the page's message; busy (503) and rate
    limited (429) are worth a Retry, a too-long message is not (`retry`: read by the page)."""
    error = gr.Error(str(exc))
    error.retry = exc.status in (429, 503)
    return error
