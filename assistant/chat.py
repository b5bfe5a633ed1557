"""One chat turn, end to end: check it, store the question, generate, store the answer.

The web page and the HTTP API both go through `ChatService`, so a turn is stored the same
way whoever sent it. A request is checked (length, parameters, model) before anything is
stored. The answer's id is chosen before generation starts, so the API can stream it; the
answer is stored when generation ends (on a storing thread, not the model's), also when the
reader stopped it (then it is kept, marked `interrupted`).
"""

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from assistant.config import ThrottleConfig
from assistant.inference import (
    ACTIVE,
    Completion,
    GenerationParams,
    InferenceEngine,
    RequestError,
    Stream,
)
from assistant.journal import Journal
from assistant.throttle import Refused, Throttle
from storage import Home, ab, adapters, open_db, partials
from storage import chat as store

ALIAS = "flywheel"  # the model name that means "whatever adapter is active now"


@dataclass
class Turn:
    """A running answer: iterate for text pieces; `result` is set once iteration ends."""
    id: str                 # the answer's message id, which is also the API's completion id
    conversation_id: str
    user_message_id: str
    prompt_tokens: int
    stream: Stream

    def __iter__(self) -> Iterator[str]:
        return iter(self.stream)

    def cancel(self) -> None:
        self.stream.cancel()

    def wait(self, timeout: float | None = None) -> Completion | None:
        self.stream.done.wait(timeout)
        return self.stream.result

    @property
    def result(self) -> Completion | None:
        return self.stream.result

    @property
    def adapter_id(self) -> str | None:
        return self.stream.adapter_id


class ChatService:
    def __init__(self, engine: InferenceEngine, home: Home, model_name: str,
                 throttle: Throttle | None = None, *, max_comment_chars: int = 4_000,
                 max_correction_chars: int = 16_000, journal: Journal | None = None,
                 catch_up: Callable[[str | None], None] | None = None):
        self.engine = engine
        self.home = home
        self.model_name = model_name
        self.throttle = throttle or Throttle(ThrottleConfig())
        self.max_comment_chars = max_comment_chars
        self.max_correction_chars = max_correction_chars
        self.journal = journal  # writes running answers' text as it streams
        # Told the active adapter's id before each answer on the default adapter, so a
        # promotion committed a moment ago is swapped in before the answer begins.
        self.catch_up = catch_up

    def check_feedback(self, comment: str | None = None, correction: str | None = None,
                       reasons: list[str] | None = None) -> None:
        """Refuse feedback text over its limit, or one holding a control token (a correction
        becomes training data), before anything is stored."""
        for field, text, limit, setting in (
                ("comment", comment, self.max_comment_chars, "max_comment_chars"),
                ("correction", correction, self.max_correction_chars,
                 "max_correction_chars")):
            if text and len(text) > limit:
                raise RequestError(f"a {field} may have at most {limit} characters ({setting}), "
                                   f"not {len(text)}", field)
            token = self.engine.control_token_in(text or "")
            if token:
                raise RequestError(f"a {field} may not contain the model's control token "
                                   f"{token!r}", field, "control_token")
        if reasons and (len(reasons) > 10 or any(len(r) > 100 for r in reasons)):
            raise RequestError("at most 10 reasons of up to 100 characters each", "reason")

    # ---- models ---------------------------------------------------------------------------

    def model_names(self) -> list[str]:
        """What a client may ask for: the alias, the base model, each servable adapter."""
        with open_db(self.home) as db:
            versions = [a["id"] for a in adapters.servable(db, self.model_name)]
        return [ALIAS, self.model_name, *versions]

    def select(self, name: str) -> tuple[str | None, Path | None]:
        """(adapter selector, its folder) for a model name; KeyError when it is not servable."""
        if name == ALIAS:
            return ACTIVE, None
        if name == self.model_name:
            return None, None
        with open_db(self.home) as db:
            row = next((a for a in adapters.servable(db, self.model_name) if a["id"] == name), None)
        if row is None:
            raise KeyError(name)
        return row["id"], Path(row["path"])

    # ---- turns ----------------------------------------------------------------------------

    def new_conversation(self, system_prompt: str | None = None, user_id: int | None = None,
                         title: str | None = None) -> str:
        with open_db(self.home) as db:
            return store.create_conversation(db, user_id=user_id, system_prompt=system_prompt,
                                             title=title)

    def reply(self, conversation_id: str | None, parent_id: str | None, text: str,
              params: GenerationParams | None = None, model: str = ALIAS, *,
              user_id: int | None = None, system_prompt: str | None = None) -> Turn:
        """Answer `text`, a new user turn replying to `parent_id` (None: the first turn) in
        `conversation_id` (None: start a new conversation for `user_id`, titled after
        `text`, with `system_prompt`). An edited turn is a reply to the same parent as the
        turn it replaces: a new branch, nothing overwritten."""
        params = params or GenerationParams()
        adapter, path = self.select(model)
        with open_db(self.home) as db:
            earlier = (store.history(db, parent_id) if parent_id else
                       self._system(db, conversation_id) if conversation_id else
                       [{"role": "system", "content": system_prompt}] if system_prompt else [])
        prompt_tokens = self.engine.check(earlier + [{"role": "user", "content": text}], params)
        with self._admitted(user_id) as release, open_db(self.home) as db, \
                store.transaction(db):
            if conversation_id is None:
                conversation_id = store.create_conversation(
                    db, user_id=user_id, title=text[:60], system_prompt=system_prompt or None)
            user_message_id = store.add_message(db, conversation_id, "user", text, parent_id)
            messages = store.history(db, user_message_id)
        return self._answer(conversation_id, user_message_id, messages, prompt_tokens, params,
                            adapter, path, release)

    def regenerate(self, user_message_id: str, params: GenerationParams | None = None,
                   model: str = ALIAS, *, user_id: int | None = None) -> Turn:
        """Another answer to a stored user turn, a sibling of the earlier ones (a pair for
        preference training)."""
        params = params or GenerationParams()
        adapter, path = self.select(model)
        with open_db(self.home) as db:
            question = store.get_message(db, user_message_id)
            if question is None or question["role"] != "user":
                raise RequestError(f"no user message {user_message_id}", "message")
            messages = store.history(db, user_message_id)
        prompt_tokens = self.engine.check(messages, params)
        with self._admitted(user_id) as release:
            return self._answer(question["conversation_id"], user_message_id, messages,
                                prompt_tokens, params, adapter, path, release)

    def complete(self, messages: list[dict[str, str]], params: GenerationParams,
                 model: str = ALIAS, user_id: int | None = None) -> Turn:
        """Answer a whole chat sent in one request (the API): stored as a new conversation."""
        adapter, path = self.select(model)
        prompt_tokens = self.engine.check(messages, params)
        with self._admitted(user_id) as release, open_db(self.home) as db:
            conversation_id, user_message_id = store.store_transcript(db, messages, user_id)
            stored = store.history(db, user_message_id)
        return self._answer(conversation_id, user_message_id, stored, prompt_tokens, params,
                            adapter, path, release)

    @contextmanager
    def _admitted(self, user_id: int | None):
        """Count the request against the caller's share and yield the release for its end;
        released at once if what follows (storing the question) fails."""
        try:
            release = self.throttle.admit(user_id)
        except Refused as exc:
            raise RequestError(str(exc), code="rate_limit_exceeded", status=exc.status,
                               retry_after=exc.retry_after) from None
        try:
            yield release
        except BaseException:
            release()
            raise

    def _ab_arm(self, conversation_id: str) -> tuple[str, Path] | None:
        """The candidate of a running A/B split, for conversations in its share."""
        with open_db(self.home) as db:
            test = ab.current(db)
        if test is None or not ab.in_candidate_arm(conversation_id, test["share"]):
            return None
        try:
            return self.select(test["candidate_id"])
        except KeyError:  # no longer servable (refused, rejected): the active one answers
            return None

    def _system(self, db, conversation_id: str) -> list[dict[str, str]]:
        conversation = store.get_conversation(db, conversation_id)
        if conversation is None:
            raise RequestError(f"no conversation {conversation_id}", "conversation")
        prompt = conversation["system_prompt"]
        return [{"role": "system", "content": prompt}] if prompt else []

    def _answer(self, conversation_id: str, user_message_id: str, messages: list[dict],
                prompt_tokens: int, params: GenerationParams, adapter: str | None,
                path: Path | None, release) -> Turn:
        answer_id = store.new_id("chatcmpl")
        if adapter == ACTIVE:  # "whatever is live": the candidate, for an A/B split's share
            if self.catch_up is not None:
                with open_db(self.home, keep=True) as db:
                    self.catch_up(adapters.active_id(db))
            adapter, path = self._ab_arm(conversation_id) or (adapter, path)
        with open_db(self.home) as db:  # journaled from the start: a crash keeps the text
            partials.start(db, answer_id, conversation_id, user_message_id,
                           model=self.model_name, params=params.as_dict(),
                           prompt_tokens=prompt_tokens)

        def save(result: Completion) -> None:  # runs on a storing thread, before the end
            with open_db(self.home) as db, store.transaction(db):
                store.add_message(
                    db, conversation_id, "assistant", result.text, user_message_id,
                    message_id=answer_id, model=self.model_name, adapter_id=result.adapter_id,
                    params=params.as_dict(), prompt_tokens=result.prompt_tokens,
                    completion_tokens=result.completion_tokens,
                    latency_ms=round(result.latency_ms, 1), finish_reason=result.finish_reason)
                partials.finish(db, answer_id)

        def ended(stream) -> None:  # however it ended; a failed answer keeps what it had
            release()
            if self.journal is not None:
                self.journal.forget(answer_id)
            if stream.result is None:
                with open_db(self.home) as db:
                    partials.recover(db, answer_id)

        stream = self.engine.chat(messages, params, adapter=adapter, adapter_path=path,
                                  on_finish=save, on_end=ended)
        if self.journal is not None:
            self.journal.track(answer_id, stream)
        return Turn(answer_id, conversation_id, user_message_id, prompt_tokens, stream)
