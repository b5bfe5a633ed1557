"""One chat turn, end to end: store the user's message, generate, store the answer.

The web UI and the HTTP API both go through `ChatService.send`, so a turn is stored the same
way whoever sent it. The user's message is stored before generation starts; the answer is
stored when generation ends, including when the reader goes away mid-answer (then it is
kept, marked `interrupted`).
"""

from dataclasses import dataclass
from typing import Iterator

from assistant.engine import ACTIVE, Engine, GenerationParams
from storage import Home, open_db
from storage import chat as store


@dataclass
class TurnUpdate:
    conversation_id: str
    user_message_id: str
    text: str                       # the answer so far
    answer_id: str | None = None    # set on the last update, once the answer is stored
    adapter_id: str | None = None
    finish_reason: str | None = None


class ChatService:
    def __init__(self, engine: Engine, home: Home, model_name: str):
        self.engine = engine
        self.home = home
        self.model_name = model_name

    def new_conversation(self, system_prompt: str | None = None, user_id: int | None = None,
                         title: str | None = None) -> str:
        with open_db(self.home) as db:
            return store.create_conversation(db, user_id=user_id, system_prompt=system_prompt,
                                             title=title)

    def send(self, conversation_id: str, parent_id: str | None, text: str,
             params: GenerationParams | None = None,
             adapter: str | None = ACTIVE) -> Iterator[TurnUpdate]:
        """Answer `text`, a reply to `parent_id` (None: the first turn). Yields the answer as
        it grows; the last update carries the stored answer's id."""
        params = params or GenerationParams()
        with open_db(self.home) as db:
            user_message_id = store.add_message(db, conversation_id, "user", text, parent_id)
            messages = store.history(db, user_message_id)
        stream = self.engine.chat(messages, params, adapter=adapter)
        answer, finished = "", False
        try:
            for piece in stream:
                answer += piece
                yield TurnUpdate(conversation_id, user_message_id, answer)
            finished = True
        finally:
            if not finished:  # the reader left (Stop, closed tab, dropped connection)
                stream.cancel()
                for _ in stream:  # wait for the worker to stop and set the result
                    pass
            result = stream.result
            if result is not None:
                with open_db(self.home) as db:
                    answer_id = store.add_message(
                        db, conversation_id, "assistant", result.text, user_message_id,
                        model=self.model_name, adapter_id=result.adapter_id,
                        params=params.as_dict(), prompt_tokens=result.prompt_tokens,
                        completion_tokens=result.completion_tokens,
                        latency_ms=round(result.latency_ms, 1), finish_reason=result.finish_reason)
        yield TurnUpdate(conversation_id, user_message_id, result.text, answer_id,
                         result.adapter_id, result.finish_reason)
