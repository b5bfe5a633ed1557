"""The boundary between the chat service and an inference engine.

`ChatService` (assistant/chat.py) asks an engine for five things: check a request, start a
stream, activate or deactivate an adapter, and say what it is serving; and it closes it.
`InferenceEngine` is that contract. The built-in engine (assistant/engine.py, transformers
on this process's own model) implements it; another engine (vLLM) can stand behind it
without the page, the API or the hot swap changing. The types both sides share live here.
"""

import concurrent.futures
import copy
import logging
import queue
import re
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

log = logging.getLogger("flywheel.engine")

ACTIVE = "active"  # adapter selector: whatever adapter is active when the request starts
STORING_THREADS = 2  # finished answers are stored on these (see `storing_pool`)


class RequestError(ValueError):
    """A request the engine will not run (too long, bad parameters); `param` names the field."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 status: int = 400, retry_after: int | None = None):
        super().__init__(message)
        self.param, self.code, self.status = param, code, status
        self.retry_after = retry_after  # seconds, for a 429


@dataclass
class GenerationParams:
    temperature: float = 0.3  # small models ramble when hotter
    top_p: float = 0.95
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)  # cut the answer before any of these
    seed: int | None = None                         # same seed, same prompt: same answer

    def as_dict(self) -> dict:
        return asdict(self)

    def batch_key(self) -> tuple | None:
        """Requests with the same key can share one `generate` call; None: run alone."""
        if self.seed is not None:
            return None
        return (True, self.temperature, self.top_p) if self.temperature > 0 else (False,)


class RequestChecks:
    """The checks every engine makes before anything is stored, with the model's tokenizer:
    parameters within their limits, no control token typed, the prompt within the context.
    Call it for the prompt's token count; RequestError names what is wrong."""

    def __init__(self, tokenizer, context_length: int, *, max_tokens_cap: int = 1024,
                 max_messages: int = 256, max_stop_chars: int = 256):
        self.context_length = context_length
        self.max_tokens_cap = max_tokens_cap
        self.max_messages = max_messages
        self.max_stop_chars = max_stop_chars  # each token checks every stop string's prefixes
        # Text that the tokenizer would read as a control token (a fake turn boundary): typed
        # by a person it is refused, never parsed, and so never reaches training data either.
        specials = sorted({t.content for t in tokenizer.added_tokens_decoder.values()
                           if t.special} | set(tokenizer.all_special_tokens), key=len, reverse=True)
        self._control = re.compile("|".join(map(re.escape, specials))) if specials else None
        # Request threads count prompt tokens with their own copy: HF tokenizers are not
        # meant to be shared across threads while one of them pads or truncates.
        self._counter = copy.deepcopy(tokenizer)
        self._counter_lock = threading.Lock()

    def __call__(self, messages: list[dict], params: "GenerationParams", busy: bool) -> int:
        if not messages or messages[-1]["role"] != "user":
            raise RequestError("the last message must be from the user", "messages")
        if busy:
            raise RequestError("the model is busy; try again in a moment", code="model_busy",
                               status=503)
        if params.max_tokens < 1 or params.max_tokens > self.max_tokens_cap:
            raise RequestError(f"max_tokens must be between 1 and {self.max_tokens_cap}, "
                               f"not {params.max_tokens}", "max_tokens")
        if not 0 <= params.temperature <= 2:
            raise RequestError("temperature must be between 0 and 2", "temperature")
        if not 0 < params.top_p <= 1:
            raise RequestError("top_p must be above 0 and at most 1", "top_p")
        if len(params.stop) > 4 or any(not s for s in params.stop):
            raise RequestError("stop takes up to 4 non-empty strings", "stop")
        if any(len(s) > self.max_stop_chars for s in params.stop):
            raise RequestError(f"a stop string may have at most {self.max_stop_chars} characters "
                               "(max_stop_chars)", "stop")
        if len(messages) > self.max_messages:
            raise RequestError(f"at most {self.max_messages} messages per request "
                               f"(max_messages), not {len(messages)}", "messages")
        for i, message in enumerate(messages):
            token = self.control_token_in(message["content"])
            if token:
                raise RequestError(f"messages may not contain the model's control token "
                                   f"{token!r}", f"messages.{i}.content", "control_token")
        chars = sum(len(m["content"]) for m in messages)
        if chars > self.context_length * 16:  # no tokenizer needed to refuse a huge paste
            raise RequestError(self._too_long(f"{chars} characters", params), "messages",
                               "context_length_exceeded")
        prompt_tokens = len(self.prompt_ids(messages))
        if prompt_tokens + params.max_tokens > self.context_length:
            raise RequestError(self._too_long(f"{prompt_tokens} tokens", params), "messages",
                               "context_length_exceeded")
        return prompt_tokens

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The prompt's tokens, formatted by the chat template as the trainer formats them."""
        with self._counter_lock:
            return self._counter.apply_chat_template(
                messages, add_generation_prompt=True, return_dict=True)["input_ids"]

    def control_token_in(self, text: str) -> str | None:
        """The first of the tokenizer's special tokens written in `text`, if any."""
        found = self._control.search(text) if self._control and text else None
        return found.group(0) if found else None

    def _too_long(self, size: str, params: "GenerationParams") -> str:
        return (f"the conversation is too long: {size} plus max_tokens {params.max_tokens} "
                f"exceeds the model's context of {self.context_length} tokens")


class EngineUnavailable(RuntimeError):
    """No inference server answers now: not an adapter's fault (the swap is tried again)."""


def closed_error() -> RequestError:
    """What a closed engine answers: the server is shutting down."""
    return RequestError("the model server is shutting down; try again in a moment",
                        code="engine_closed", status=503)


def refused_when_closed() -> concurrent.futures.Future:
    """An engine job's future once the engine is closed: it raises `closed_error()`."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_exception(closed_error())
    return future


def storing_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The threads an engine stores finished answers on: never the model's own thread or a
    request's, so a slow database write cannot stall generation."""
    return concurrent.futures.ThreadPoolExecutor(STORING_THREADS, "flywheel-store")


@dataclass
class Completion:
    """What a finished (or stopped) generation produced, for storing beside the text."""
    text: str
    adapter_id: str | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop", "length" or "interrupted"
    latency_ms: float


@dataclass
class EngineStatus:
    """What /healthz says of the engine."""
    engine: str                  # "local" (the built-in engine) or "vllm"
    adapter: str | None          # the adapter new requests get; None: the base model
    queued: int                  # requests waiting for the model
    batches_started: int         # batches so far
    adapter_since_batch: int     # batches_started when the serving adapter last changed
    replicas: list[dict] = field(default_factory=list)  # vLLM: each server's url and state


class Stream:
    """Iterate for text pieces as they are generated; `result` is set once iteration ends.
    `adapter_id` is set when generation starts, before the first piece.

    The engine calls `end` when generation is over. The answer is stored (`on_finish`) on
    the `storer` pool, never on the engine's own thread, so a slow write cannot stall a
    batch; iteration ends only once it is stored, so a reader that saw the end can rate it."""

    _END = object()

    def __init__(self, storer: concurrent.futures.Executor,
                 on_finish: Callable[[Completion], None] | None = None,
                 on_end: Callable[["Stream"], None] | None = None) -> None:
        self._storer = storer
        self._on_finish = on_finish  # stores the result; an error there fails the stream
        self._on_end = on_end        # runs once the stream ends, however it ends
        self._pieces: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self.adapter_id: str | None = None
        self.partial = ""  # the text streamed so far (the journal reads it)
        self.result: Completion | None = None
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[str]:
        while True:
            item = self._pieces.get()
            if item is Stream._END:
                if self.error is not None:
                    raise self.error
                return
            yield item

    def cancel(self) -> None:
        """Ask the engine to stop after the current token; the partial text is kept."""
        self.cancelled.set()

    # ---- for engines ----------------------------------------------------------------------

    def put(self, piece: str) -> None:
        """Stream one more piece of text to the reader."""
        self._pieces.put(piece)

    def end(self, result: Completion) -> None:
        """Generation is over: store the result off the caller's thread, then end."""
        try:
            self._storer.submit(self._store_and_end, result)
        except RuntimeError:  # the pool is shut down (an engine closed past its timeout)
            self._store_and_end(result)

    def fail(self, error: BaseException) -> None:
        """Generation failed or was refused: end with `error` (nothing to store)."""
        self._end(None, error)

    def _store_and_end(self, result: Completion) -> None:
        error = None
        if self._on_finish is not None:
            try:
                self._on_finish(result)
            except Exception as exc:  # the reader must hear that the answer was not stored
                log.exception("storing the answer failed")
                error = exc
        self._end(result, error)

    def _end(self, result: Completion | None, error: BaseException | None) -> None:
        self.result, self.error = result, error
        try:
            if self._on_end is not None:
                self._on_end(self)
        finally:
            self.done.set()
            self._pieces.put(Stream._END)


def tidy_end(text: str) -> str:
    """An answer's stored end: no trailing space, and no half of a UTF-8 character (a stop
    or the token limit can fall between the bytes of one; it decodes as U+FFFD)."""
    return text.rstrip().rstrip("\ufffd").rstrip()


class InferenceEngine(Protocol):
    """What the chat service and the adapter watcher need from an engine. Every method is
    safe to call from any thread."""

    base_name: str               # the base model every adapter was trained on
    active_adapter: str | None   # the adapter new requests get; None: the bare base model

    def check(self, messages: list[dict], params: GenerationParams) -> int:
        """Validate a request before anything is stored; its prompt token count. Raises
        RequestError with a message for the user."""
        ...

    def control_token_in(self, text: str) -> str | None:
        """The first of the model's control tokens written in `text`, if any."""
        ...

    def chat(self, messages: list[dict], params: GenerationParams, adapter: str | None = ACTIVE,
             adapter_path: Path | None = None,
             on_finish: Callable[[Completion], None] | None = None,
             on_end: Callable[[Stream], None] | None = None) -> Stream:
        """Start generating (`adapter`: ACTIVE, None for the base model, or an adapter id
        loaded from `adapter_path` if need be); returns at once. `on_finish` stores the
        result before the stream ends, off the engine's thread; `on_end` runs however the
        stream ends. A cancelled stream ends with finish_reason "interrupted"."""
        ...

    def activate(self, adapter_id: str, path: Path) -> concurrent.futures.Future:
        """Load an adapter beside the current one, smoke-test it, then make it the default.
        The future raises if the adapter is broken; the previous adapter keeps serving."""
        ...

    def deactivate(self) -> concurrent.futures.Future:
        """Serve the bare base model by default again."""
        ...

    def status(self) -> EngineStatus:
        """What it serves now, for /healthz."""
        ...

    def close(self) -> None:
        """Refuse new requests, interrupt running ones (they are stored as interrupted),
        wait until every answer is stored, and stop."""
        ...
