"""The chat page (Gradio Blocks): streaming answers, multi-turn history, thumbs up / down.

The page's events double as its API (`gradio_client`): `/send` chats in the caller's
session, `/rate` rates an answer by id. Both go through the same service and storage
functions as the HTTP API.
"""

import logging

import gradio as gr

from assistant.chat import ChatService
from assistant.engine import GenerationParams
from storage import open_db
from storage import chat as store

log = logging.getLogger("flywheel.ui")


def _new_session() -> dict:
    # history: what the Chatbot shows; ids: the stored message id of each history entry.
    return {"conversation_id": None, "leaf_id": None, "history": [], "ids": []}


def build_ui(service: ChatService) -> gr.Blocks:
    def send(text: str, session: dict, temperature: float, max_tokens: int):
        """Send a message in this session's conversation and stream the answer."""
        text = (text or "").strip()
        if not text:
            raise gr.Error("Type a message first.")
        session = dict(session or _new_session())
        if session["conversation_id"] is None:
            session["conversation_id"] = service.new_conversation(title=text[:60])
        history = session["history"] + [{"role": "user", "content": text},
                                        {"role": "assistant", "content": ""}]
        params = GenerationParams(temperature=float(temperature), max_tokens=int(max_tokens))
        update = None
        yield history, session, "", {}  # show the question at once, before the first token
        try:
            for update in service.send(session["conversation_id"], session["leaf_id"], text, params):
                history[-1]["content"] = update.text
                yield history, session, "", {}
        except Exception as exc:
            log.exception("chat failed")
            raise gr.Error(f"The model could not answer: {type(exc).__name__}") from None
        session["history"] = history
        session["ids"] = session["ids"] + [update.user_message_id, update.answer_id]
        session["leaf_id"] = update.answer_id
        last = {"conversation_id": update.conversation_id, "message_id": update.answer_id,
                "adapter_id": update.adapter_id, "finish_reason": update.finish_reason}
        yield history, session, "", last

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
        stop_btn.click(None, None, None, cancels=[sent, submitted], api_visibility="private")
        new_btn.click(lambda: ([], _new_session(), {}), None, [chatbot, session, last],
                      api_name="new_conversation")
        chatbot.like(on_like, [session], None, api_visibility="private")
        gr.api(rate, api_name="rate")
    return demo
