"""The chat page (Gradio Blocks): streaming answers, multi-turn history, thumbs up / down.

The page's events double as its API (`gradio_client`): `/send` chats in the caller's
session, `/rate` rates an answer by id. Both go through the same service and storage
functions as the HTTP API.
"""

import logging

import gradio as gr

from assistant.chat import ChatService, Turn
from assistant.engine import GenerationParams, RequestError
from storage import open_db
from storage import chat as store

log = logging.getLogger("flywheel.ui")


def _new_session() -> dict:
    # history: what the Chatbot shows; ids: the stored message id of each history entry.
    return {"conversation_id": None, "leaf_id": None, "history": [], "ids": []}


def _finished(session: dict, history: list, turn: Turn) -> tuple[list, dict]:
    """The session after an answer is stored: the next message replies to it."""
    session["history"] = history
    session["ids"] = session["ids"] + [turn.user_message_id, turn.id]
    session["leaf_id"] = turn.id
    return history, session


def _last(turn: Turn) -> dict:
    result = turn.result
    return {"conversation_id": turn.conversation_id, "message_id": turn.id,
            "adapter_id": result.adapter_id if result else turn.adapter_id,
            "finish_reason": result.finish_reason if result else None}


def build_ui(service: ChatService) -> gr.Blocks:
    running: dict[str, Turn] = {}  # session hash -> the answer being generated for it

    def send(text: str, session: dict, temperature: float, max_tokens: int,
             request: gr.Request):
        """Send a message in this session's conversation and stream the answer."""
        text = (text or "").strip()
        if not text:
            raise gr.Error("Type a message first.")
        session = dict(session or _new_session())
        params = GenerationParams(temperature=float(temperature), max_tokens=int(max_tokens))
        try:
            turn = service.reply(session["conversation_id"], session["leaf_id"], text, params)
        except RequestError as exc:
            raise gr.Error(str(exc)) from None
        session["conversation_id"] = turn.conversation_id
        running[request.session_hash] = (turn, text)
        history = session["history"] + [{"role": "user", "content": text},
                                        {"role": "assistant", "content": ""}]
        yield history, session, "", {}  # show the question at once, before the first token
        try:
            for piece in turn:
                history[-1]["content"] += piece
                yield history, session, "", {}
        except Exception as exc:
            log.exception("chat failed")
            raise gr.Error(f"The model could not answer: {type(exc).__name__}") from None
        finally:
            # Stop (which cancels this generator first) or a closed page: stop the model.
            # The entry stays for the Stop handler, which reports the stored partial answer.
            turn.cancel()
        running.pop(request.session_hash, None)
        history, session = _finished(session, history, turn)
        yield history, session, "", _last(turn)

    def stop(session: dict, request: gr.Request):
        """Stop this session's answer within one token; the partial answer is kept."""
        turn, text = running.pop(request.session_hash, (None, None))
        if turn is None:
            return session["history"], session, {}
        turn.cancel()
        result = turn.wait(timeout=30)
        history = session["history"] + [
            {"role": "user", "content": text},
            {"role": "assistant", "content": result.text if result else ""}]
        history, session = _finished(dict(session), history, turn)
        return history, session, _last(turn)

    def rate(message_id: str, rating: str) -> str:
        """Rate an answer 'up' or 'down' by its message id."""
        try:
            with open_db(service.home) as db:
                store.rate(db, message_id, rating)
        except (KeyError, ValueError) as exc:
            raise gr.Error(str(exc)) from None
        return "ok"

    def on_like(session: dict, data: gr.LikeData) -> None:
        ids = (session or {}).get("ids", [])
        if not isinstance(data.index, int) or data.index >= len(ids):
            raise gr.Error("That answer is not stored yet; wait for it to finish.")
        rate(ids[data.index], "up" if data.liked is True else "down")

    with gr.Blocks(title="Flywheel") as demo:
        gr.Markdown("## Flywheel\nRate answers with 👍 / 👎: ratings teach the next adapter.")
        session = gr.State(_new_session())
        chatbot = gr.Chatbot(label="Chat", height=480)
        with gr.Row():
            box = gr.Textbox(placeholder="Message Flywheel…", show_label=False, scale=8,
                             autofocus=True)
            send_btn = gr.Button("Send", variant="primary", scale=1)
            stop_btn = gr.Button("Stop", scale=1)
        with gr.Accordion("Settings", open=False):
            defaults = GenerationParams()  # one place for the defaults: the engine's
            temperature = gr.Slider(0.0, 1.5, value=defaults.temperature, step=0.05,
                                    label="Temperature")
            max_tokens = gr.Slider(16, 1024, value=defaults.max_tokens, step=16,
                                   label="Max new tokens")
            new_btn = gr.Button("New conversation")
        last = gr.JSON(visible=False, label="Last answer")

        inputs, outputs = [box, session, temperature, max_tokens], [chatbot, session, box, last]
        sent = send_btn.click(send, inputs, outputs, api_name="send")
        submitted = box.submit(send, inputs, outputs, api_visibility="private")
        stop_btn.click(stop, [session], [chatbot, session, last], cancels=[sent, submitted],
                       api_name="stop")
        new_btn.click(lambda: ([], _new_session(), {}), None, [chatbot, session, last],
                      api_name="new_conversation")
        chatbot.like(on_like, [session], None, api_visibility="private")
        gr.api(rate, api_name="rate")
    return demo
