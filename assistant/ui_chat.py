"""The Chat tab: the user's conversations, streaming answers with Stop, regenerate and
edit (both make branches in the message tree, nothing is overwritten), moving between
sibling answers, and thumbs with reasons and a comment.

The page's API (through `gradio_client`): /send, /stop, /regenerate, /edit, /rate,
/new_conversation, /open_conversation, /rename_conversation, /delete_conversation.
"""

import logging

import gradio as gr

from assistant.chat import Turn
from assistant.engine import GenerationParams, RequestError
from storage import open_db
from storage import chat as store

log = logging.getLogger("flywheel.ui")

UP_REASONS = ["accurate", "followed instructions", "clear", "helpful tone"]
CONVERSATIONS_SHOWN = 200  # the most recently active; older ones are kept, not listed
DOWN_REASONS = ["wrong", "didn't follow instructions", "refused wrongly", "too long", "unsafe",
                "other"]


def _new_session() -> dict:
    # leaf_id: the last message of the branch on screen; ids: the stored id of each message
    # shown; selected: the message clicked in the chat, for branching and rating.
    return {"conversation_id": None, "leaf_id": None, "ids": [], "selected": None}


def _branch(page, leaf_id: str | None) -> tuple[list[dict], list[str]]:
    """The chat from its first turn down to `leaf_id`, as the Chatbot shows it."""
    if leaf_id is None:
        return [], []
    with open_db(page.home) as db:
        path = [m for m in store.thread(db, leaf_id) if m["role"] != "system"]
    return [{"role": m["role"], "content": m["content"]} for m in path], [m["id"] for m in path]


def _last(turn: Turn) -> dict:
    result = turn.result
    return {"conversation_id": turn.conversation_id, "message_id": turn.id,
            "adapter_id": result.adapter_id if result else turn.adapter_id,
            "finish_reason": result.finish_reason if result else None}


def _conversations(page, user: dict, selected: str | None = None):
    """The user's most recently active conversations (a page of them)."""
    with open_db(page.home) as db:
        rows = store.list_conversations(db, user["id"], limit=CONVERSATIONS_SHOWN).rows
    return gr.Radio(choices=[(r["title"] or "Untitled", r["id"]) for r in rows], value=selected)


def build(page, demo: gr.Blocks) -> None:
    # session hash -> (answer in progress, the page's session, the user it answers)
    running: dict[str, tuple[Turn, dict, int | None]] = {}

    def stream(turn: Turn, session: dict, history: list, user: dict, request: gr.Request):
        """Show the answer as it grows; afterwards the branch ends at the stored answer."""
        session = {**session, "conversation_id": turn.conversation_id, "selected": None}
        history = history + [{"role": "assistant", "content": ""}]
        running[request.session_hash] = (turn, session, user["id"])
        yield history, session, "", {}  # the question shows at once, before the first token
        try:
            for piece in turn:
                history[-1]["content"] += piece
                yield history, session, "", {}
        except Exception as exc:
            log.exception("chat failed")
            raise gr.Error(f"The model could not answer: {type(exc).__name__}") from None
        finally:
            turn.cancel()  # a no-op when finished; a closed page or Stop stops the model
        running.pop(request.session_hash, None)
        history, ids = _branch(page, turn.id)
        yield history, {**session, "leaf_id": turn.id, "ids": ids}, "", _last(turn)

    def params(temperature, max_tokens) -> GenerationParams:
        return GenerationParams(temperature=float(temperature), max_tokens=int(max_tokens))

    def send(text: str, session: dict, system_prompt: str, temperature: float, max_tokens: int,
             request: gr.Request):
        """Send a message in the open conversation (or a new one) and stream the answer."""
        user = page.user(request)
        text = (text or "").strip()
        if not text:
            raise gr.Error("Type a message first.")
        session = dict(session or _new_session())
        if session["conversation_id"]:
            page.own_conversation(user, session["conversation_id"])
        try:
            turn = page.service.reply(session["conversation_id"], session["leaf_id"], text,
                                      params(temperature, max_tokens), user_id=user["id"],
                                      system_prompt=system_prompt)
        except RequestError as exc:
            raise gr.Error(str(exc)) from None
        history, _ = _branch(page, session["leaf_id"])
        yield from stream(turn, session, history + [{"role": "user", "content": text}], user,
                          request)

    def stop(session: dict, request: gr.Request):
        """Stop this session's answer within one token; the partial answer is kept."""
        user = page.user(request)
        entry = running.get(request.session_hash)
        if entry is None or entry[2] != user["id"]:  # only your own answer (a hash can leak)
            history, _ = _branch(page, session["leaf_id"])
            return history, session, {}
        running.pop(request.session_hash, None)
        turn, session, _ = entry
        turn.cancel()
        turn.wait(timeout=30)
        history, ids = _branch(page, turn.id)
        return history, {**session, "leaf_id": turn.id, "ids": ids}, _last(turn)

    def regenerate(session: dict, temperature: float, max_tokens: int, request: gr.Request):
        """A new answer to the selected answer's question (default: the last answer's),
        kept beside the earlier one as a sibling."""
        user = page.user(request)
        target = session.get("selected") or (session["ids"][-1] if session["ids"] else None)
        answer = page.own_message(user, target)
        if answer["role"] != "assistant":
            raise gr.Error("Select an answer to regenerate.")
        try:
            turn = page.service.regenerate(answer["parent_id"], params(temperature, max_tokens),
                                           user_id=user["id"])
        except RequestError as exc:
            raise gr.Error(str(exc)) from None
        history, _ = _branch(page, answer["parent_id"])
        yield from stream(turn, session, history, user, request)

    def edit(text: str, session: dict, temperature: float, max_tokens: int,
             request: gr.Request):
        """Send a changed version of the selected user message: a new branch from there."""
        user = page.user(request)
        original = page.own_message(user, session.get("selected"))
        text = (text or "").strip()
        if original["role"] != "user" or not text:
            raise gr.Error("Select one of your messages and write its new text.")
        try:
            turn = page.service.reply(original["conversation_id"], original["parent_id"], text,
                                      params(temperature, max_tokens), user_id=user["id"])
        except RequestError as exc:
            raise gr.Error(str(exc)) from None
        history, _ = _branch(page, original["parent_id"])
        yield from stream(turn, session, history + [{"role": "user", "content": text}], user,
                          request)

    def select(session: dict, event: gr.SelectData, request: gr.Request):
        """Clicking a message selects it: for branching, moving between siblings, rating."""
        user = page.user(request)
        index = event.index if isinstance(event.index, int) else event.index[0]
        if not session["ids"] or index >= len(session["ids"]):
            return session, "", ""
        message = page.own_message(user, session["ids"][index])
        session = {**session, "selected": message["id"]}
        return session, _where(message), message["content"] if message["role"] == "user" else ""

    def _where(message: dict) -> str:
        with open_db(page.home) as db:
            ids = store.siblings(db, message["id"])
        kind = "answer" if message["role"] == "assistant" else "message"
        return f"Selected {kind} {ids.index(message['id']) + 1} of {len(ids)}"

    def move(session: dict, step: int, request: gr.Request):
        """Show the previous / next sibling of the selected message, and its branch."""
        user = page.user(request)
        message = page.own_message(user, session.get("selected"))
        with open_db(page.home) as db:
            ids = store.siblings(db, message["id"])
            target = ids[max(0, min(len(ids) - 1, ids.index(message["id"]) + step))]
            leaf = store.latest_leaf(db, target)
            target_row = store.get_message(db, target)
        history, shown = _branch(page, leaf)
        session = {**session, "leaf_id": leaf, "ids": shown, "selected": target}
        return history, session, _where(target_row)

    def rate(message_id: str, rating: str, reasons: list[str] | None = None,
             comment: str | None = None, request: gr.Request = None) -> str:
        """Rate an answer 'up' or 'down' by its message id, with optional reasons and a
        comment; a later rating replaces it."""
        user = page.user(request)
        page.own_message(user, message_id, curators_too=True)
        allowed = UP_REASONS if rating == "up" else DOWN_REASONS
        if any(r not in allowed for r in reasons or []):
            raise gr.Error(f"Reasons for '{rating}' are: {', '.join(allowed)}.")
        try:
            page.service.check_feedback(comment=comment)
            with open_db(page.home) as db:
                store.record_feedback(db, message_id, rating, reasons=reasons or [],
                                      comment=(comment or "").strip() or None,
                                      rater_id=user["id"])
        except (KeyError, ValueError) as exc:  # RequestError is a ValueError
            raise gr.Error(str(exc)) from None
        return "ok"

    def save_rating(session, thumb, reasons, comment, request: gr.Request):
        target = session.get("selected") or (session["ids"][-1] if session["ids"] else None)
        if not thumb:
            raise gr.Error("Choose 👍 or 👎 first.")
        rate(target, thumb, reasons, comment, request)
        return f"Saved: {'👍' if thumb == 'up' else '👎'} {', '.join(reasons or [])}".strip()

    def on_like(session: dict, data: gr.LikeData, request: gr.Request) -> None:
        ids = (session or {}).get("ids", [])
        if not isinstance(data.index, int) or data.index >= len(ids):
            raise gr.Error("That answer is not stored yet; wait for it to finish.")
        rate(ids[data.index], "up" if data.liked is True else "down", request=request)

    def new_conversation(request: gr.Request):
        user = page.user(request)
        return [], _new_session(), {}, _conversations(page, user), ""

    def show_conversation(conversation_id: str, request: gr.Request):
        """Show a conversation of yours, at its most recent branch."""
        user = page.user(request)
        if not conversation_id:
            return [], _new_session(), ""
        conversation = page.own_conversation(user, conversation_id)
        with open_db(page.home) as db:
            last = store.last_message(db, conversation_id)
        history, ids = _branch(page, last)
        session = {**_new_session(), "conversation_id": conversation_id, "leaf_id": last,
                   "ids": ids}
        return history, session, conversation["system_prompt"] or ""

    def rename_conversation(session: dict, title: str, request: gr.Request):
        user = page.user(request)
        if not session.get("conversation_id"):
            raise gr.Error("Open a conversation first.")
        page.own_conversation(user, session["conversation_id"])
        try:
            with open_db(page.home) as db:
                store.update_conversation(db, session["conversation_id"], title=title or "")
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        return _conversations(page, user, session["conversation_id"]), ""

    def delete_conversation(session: dict, request: gr.Request):
        user = page.user(request)
        if not session.get("conversation_id"):
            raise gr.Error("Open a conversation first.")
        page.own_conversation(user, session["conversation_id"])
        with open_db(page.home) as db:
            store.delete_conversation(db, session["conversation_id"])
        return [], _new_session(), _conversations(page, user)

    def save_system_prompt(session: dict, system_prompt: str, request: gr.Request) -> str:
        user = page.user(request)
        if not session.get("conversation_id"):
            return "Used when you send the first message."
        page.own_conversation(user, session["conversation_id"])
        with open_db(page.home) as db:
            store.update_conversation(db, session["conversation_id"],
                                      system_prompt=system_prompt or "")
        return "Saved: it applies to the next answers."

    def list_mine(session: dict, request: gr.Request):
        return _conversations(page, page.user(request), (session or {}).get("conversation_id"))

    # ---- layout ---------------------------------------------------------------------------
    session = gr.State(_new_session())
    with gr.Row():
        with gr.Column(scale=1, min_width=220):
            new_btn = gr.Button("+ New chat", elem_id="new-chat")
            conversations = gr.Radio(label="Your conversations", choices=[],
                                     elem_id="conversations")
            title = gr.Textbox(placeholder="New title", show_label=False, elem_id="title")
            with gr.Row():
                rename_btn = gr.Button("Rename", size="sm", elem_id="rename")
                delete_btn = gr.Button("Delete", size="sm", variant="stop", elem_id="delete-chat")
        with gr.Column(scale=4):
            with gr.Accordion("System prompt", open=False):
                system = gr.Textbox(placeholder="e.g. You are a concise assistant.",
                                    show_label=False, lines=2, elem_id="system-prompt")
                system_btn = gr.Button("Save system prompt", size="sm")
                system_note = gr.Markdown()
            chatbot = gr.Chatbot(label="Chat", height=460, elem_id="chatbot")
            with gr.Row():
                box = gr.Textbox(placeholder="Message Flywheel…", show_label=False, scale=8,
                                 autofocus=True, elem_id="message")
                send_btn = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                stop_btn = gr.Button("Stop", scale=1, elem_id="stop")
            with gr.Row():
                regen_btn = gr.Button("↻ Regenerate", size="sm", elem_id="regenerate")
                prev_btn = gr.Button("◀", size="sm", elem_id="prev-sibling")
                where = gr.Markdown("Click a message to select it.", elem_id="selected")
                next_btn = gr.Button("▶", size="sm", elem_id="next-sibling")
            with gr.Accordion("Rate or edit the selected message", open=False, elem_id="panel"):
                with gr.Row():
                    thumb = gr.Radio([("👍", "up"), ("👎", "down")], label="Rating",
                                     elem_id="thumb")
                    reasons = gr.CheckboxGroup(UP_REASONS + DOWN_REASONS, label="Reasons",
                                               elem_id="reasons")
                comment = gr.Textbox(label="Comment (optional)", elem_id="comment")
                rate_btn = gr.Button("Save rating", size="sm", elem_id="save-rating")
                rate_note = gr.Markdown(elem_id="rating-status")
                edit_box = gr.Textbox(label="Edit your message (starts a new branch)",
                                      elem_id="edit-box")
                edit_btn = gr.Button("Send edited message", size="sm", elem_id="edit-send")
            with gr.Accordion("Settings", open=False):
                defaults = GenerationParams()  # one place for the defaults: the engine's
                temperature = gr.Slider(0.0, 1.5, value=defaults.temperature, step=0.05,
                                        label="Temperature")
                max_tokens = gr.Slider(16, 1024, value=defaults.max_tokens, step=16,
                                       label="Max new tokens")
            last = gr.JSON(visible=False, label="Last answer")

    # ---- events ---------------------------------------------------------------------------
    knobs = [temperature, max_tokens]
    streamed = [chatbot, session, box, last]
    sent = send_btn.click(send, [box, session, system, *knobs], streamed, api_name="send")
    submitted = box.submit(send, [box, session, system, *knobs], streamed,
                           api_visibility="private")
    regenerated = regen_btn.click(regenerate, [session, *knobs], streamed, api_name="regenerate")
    edited = edit_btn.click(edit, [edit_box, session, *knobs], streamed, api_name="edit")
    for event in (sent, submitted, regenerated, edited):
        event.then(list_mine, [session], [conversations], api_visibility="private")
    # Not Gradio's `cancels=`: that cancels by session hash alone, and a hash can leak; `stop`
    # checks that the answer is the caller's, then the answer's own stream ends within a token.
    stop_btn.click(stop, [session], [chatbot, session, last], api_name="stop")
    chatbot.select(select, [session], [session, where, edit_box], api_visibility="private")
    chatbot.like(on_like, [session], None, api_visibility="private")
    def previous_sibling(session: dict, request: gr.Request):
        return move(session, -1, request)

    def next_sibling(session: dict, request: gr.Request):
        return move(session, 1, request)
    prev_btn.click(previous_sibling, [session], [chatbot, session, where],
                   api_name="previous_sibling")
    next_btn.click(next_sibling, [session], [chatbot, session, where], api_name="next_sibling")
    thumb.change(lambda t: gr.CheckboxGroup(choices=UP_REASONS if t == "up" else DOWN_REASONS,
                                            value=[]),
                 [thumb], [reasons], api_visibility="private")
    rate_btn.click(save_rating, [session, thumb, reasons, comment], [rate_note],
                   api_visibility="private")
    gr.api(rate, api_name="rate")
    new_btn.click(new_conversation, None, [chatbot, session, last, conversations, system],
                  api_name="new_conversation")
    conversations.input(show_conversation, [conversations], [chatbot, session, system],
                        api_visibility="private")

    def read_conversation(conversation_id: str, request: gr.Request) -> list[dict]:
        """The messages of one of your conversations, on its most recent branch."""
        return show_conversation(conversation_id, request)[0]
    gr.api(read_conversation, api_name="open_conversation")
    rename_btn.click(rename_conversation, [session, title], [conversations, title],
                     api_name="rename_conversation")
    delete_btn.click(delete_conversation, [session], [chatbot, session, conversations],
                     api_name="delete_conversation")
    system_btn.click(save_system_prompt, [session, system], [system_note],
                     api_visibility="private")
    demo.load(list_mine, [session], [conversations], api_visibility="private")
