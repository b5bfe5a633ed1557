"""The OpenAI-compatible API under /v1: chat completions (streamed or not), models, feedback.

Requests are checked in full (schema, model, length, parameters) before anything is stored,
and every refusal is a 4xx in OpenAI's error shape, so OpenAI's own client raises its own
exception classes. A completion's `id` is the stored answer's message id: `POST
/v1/feedback` takes it back. The response's `model` names the version that answered (an
adapter id, or the base model). Who may call is `assistant/auth.py`'s: once the database
holds a user, every call needs `Authorization: Bearer <key>` (`flywheel keys create USER`).
"""

import asyncio
import json
import logging
import sqlite3
import time
from contextlib import nullcontext
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from assistant.auth import Auth
from assistant.chat import ChatService, Turn
from assistant.inference import GenerationParams, RequestError
from storage import chat as store
from storage import open_db
from storage.db import WouldWait, without_waiting

log = logging.getLogger("flywheel.api")


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 retry_after: int | None = None):
        super().__init__(message)
        self.status, self.type, self.param, self.code = status, type, param, code
        self.retry_after = retry_after

    @classmethod
    def of(cls, exc: RequestError) -> "APIError":
        """The engine's or the service's refusal, as the API says it."""
        kind = ("server_error" if exc.status >= 500 else
                "rate_limit_error" if exc.status == 429 else "invalid_request_error")
        return cls(exc.status, str(exc), kind, exc.param, exc.code, exc.retry_after)


def error_response(status: int, message: str, type: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None,
                   retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": {"message": message, "type": type, "param": param,
                                   "code": code}}, status_code=status, headers=headers)


# ---- request and response shapes (OpenAI's) ----------------------------------------------

class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def plain(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(
            p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatRequest(BaseModel):
    # Fields OpenAI defines that Flywheel does not use (presence_penalty, logprobs...) are
    # accepted and ignored, as other OpenAI-compatible servers do; known fields are strict.
    model_config = ConfigDict(extra="allow")
    model: str
    messages: Annotated[list[Message], Field(min_length=1)]
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: Annotated[int, Field(ge=-(2**63), lt=2**64)] | None = None  # what torch takes
    n: Annotated[int, Field(ge=1, le=1)] = 1
    stream: bool = False
    stream_options: dict | None = None
    user: str | None = None


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    rating: Literal["up", "down"] | None = None
    reason: str | list[str] | None = None
    comment: str | None = None
    correction: str | None = None
    score: Annotated[int, Field(ge=1, le=5)] | None = None


# ---- auth ---------------------------------------------------------------------------------

def make_auth(auth: Auth):
    async def authenticate(request: Request) -> dict | None:
        """The calling user (a key, or the page's sign-in cookie); None for the local owner.
        On the event loop: two indexed reads on this thread's open connection take about
        50 us, less than handing the request to a worker thread and back."""
        user = auth.caller(request)
        if user is None:
            raise APIError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                           "invalid_request_error", code="invalid_api_key")
        return None if user["id"] is None else user
    return authenticate


# ---- routes -------------------------------------------------------------------------------

def build_router(service: ChatService, auth: Auth) -> APIRouter:
    router = APIRouter(prefix="/v1")
    Caller = Annotated[dict | None, Depends(make_auth(auth))]

    @router.get("/models")
    def list_models(caller: Caller) -> dict:
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "flywheel"}
            for name in service.model_names()]}

    @router.post("/chat/completions")
    async def chat_completions(body: ChatRequest, caller: Caller, request: Request):
        params = _params(body)
        messages = [m.plain() for m in body.messages]
        try:
            turn = await asyncio.to_thread(service.complete, messages, params, model=body.model,
                                           user_id=caller["id"] if caller else None)
        except KeyError:
            raise APIError(404, f"the model '{body.model}' does not exist; GET /v1/models "
                           "lists what can be served", param="model",
                           code="model_not_found") from None
        except RequestError as exc:
            raise APIError.of(exc) from None
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_sse(turn, service.model_name, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        # A client that goes away stops its answer within a token (kept as `interrupted`).
        watcher = asyncio.create_task(_cancel_on_disconnect(request, turn))
        try:
            text = await asyncio.to_thread(lambda: "".join(turn))
        except RequestError as exc:  # e.g. vLLM went away: 503, and what it had is kept
            raise APIError.of(exc) from None
        except Exception as exc:
            raise APIError(500, f"generation failed: {type(exc).__name__}",
                           "server_error") from None
        finally:
            watcher.cancel()
        result = turn.result
        return {
            "id": turn.id, "object": "chat.completion", "created": int(time.time()),
            "model": result.adapter_id or service.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": result.finish_reason, "logprobs": None}],
            "usage": _usage(result),
        }

    @router.post("/feedback")
    async def feedback(body: Feedback, caller: Caller) -> dict:
        # Written on the event loop when no other writer holds the database (a quarter of
        # a millisecond); handing every write to a worker thread and back cost three times
        # the write (16 writers: 565-600 writes/s that way, about 1,000 this way).
        try:
            return store_feedback(body, caller, wait=False)
        except WouldWait:
            return await asyncio.to_thread(store_feedback, body, caller, wait=True)

    def store_feedback(body: Feedback, caller: dict | None, wait: bool) -> dict:
        reasons = [body.reason] if isinstance(body.reason, str) else body.reason
        try:
            service.check_feedback(body.comment, body.correction, reasons)
        except RequestError as exc:
            raise APIError.of(exc) from None
        with open_db(service.home, keep=True) as db, \
                (nullcontext(db) if wait else without_waiting(db)):
            # Curators, admins and the local owner (no auth) rate any answer; a user, their own.
            answer = store.message_for(db, body.id, caller["id"] if caller else None,
                                       any_owner=caller is None or caller["role"] != "user")
            if answer is None or answer["role"] != "assistant":
                raise APIError(404, f"no completion with id {body.id}", param="id",
                               code="completion_not_found")
            try:
                ids = store.record_feedback(db, body.id, body.rating, reasons=reasons,
                                            comment=body.comment, correction=body.correction,
                                            score=body.score,
                                            rater_id=caller["id"] if caller else None)
            except ValueError as exc:
                raise APIError(400, str(exc)) from None
        return {"id": body.id, "object": "feedback", **ids}

    @router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                      include_in_schema=False)
    def unknown(path: str):  # without this, the page mounted at / would answer with HTML
        raise APIError(404, f"no such endpoint: /v1/{path}", code="unknown_url")

    return router


def _params(body: ChatRequest) -> GenerationParams:
    defaults = GenerationParams()
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return GenerationParams(
        temperature=defaults.temperature if body.temperature is None else body.temperature,
        top_p=defaults.top_p if body.top_p is None else body.top_p,
        max_tokens=body.max_completion_tokens or body.max_tokens or defaults.max_tokens,
        stop=stop, seed=body.seed)


async def _cancel_on_disconnect(request: Request, turn: Turn) -> None:
    """Wait for the client to go away (the body is read, so the next ASGI message is the
    disconnect), then stop the answer."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    turn.cancel()


def _usage(result) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


async def _sse(turn: Turn, base_name: str, include_usage: bool):
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`. If the client
    goes away, Starlette cancels this generator and `finally` stops the model."""
    created = int(time.time())

    def chunk(delta: dict | None, finish: str | None = None, usage: dict | None = None) -> str:
        """One SSE event; `delta=None` is the closing usage chunk, which has no choices."""
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        body = {"id": turn.id, "object": "chat.completion.chunk", "created": created,
                "model": turn.adapter_id or base_name, "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    pieces = iter(turn)
    try:
        # The first chunk waits for the first piece: by then the adapter that answers is known.
        piece = await asyncio.to_thread(next, pieces, None)
        yield chunk({"role": "assistant", "content": ""})
        while piece is not None:
            yield chunk({"content": piece})
            piece = await asyncio.to_thread(next, pieces, None)
        result = turn.result
        yield chunk({}, result.finish_reason)
        if include_usage:
            yield chunk(None, usage=_usage(result))
        yield "data: [DONE]\n\n"
    except Exception as exc:  # the model failed mid-answer: say so in the stream
        log.exception("streaming failed")
        known = isinstance(exc, RequestError)  # e.g. vLLM went away: its message and code
        body = {"error": {"message": str(exc) if known else
                          f"generation failed: {type(exc).__name__}",
                          "type": "server_error", "param": None,
                          "code": exc.code if known else None}}
        yield f"data: {json.dumps(body)}\n\n"
    finally:
        turn.cancel()  # no-op when finished; on a disconnect, stops within one token


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _param(loc) -> str | None:
    """`body.messages.0.content.str` -> `messages.0.content`: the field, not pydantic's union
    branch tags."""
    parts = []
    for part in list(loc)[1:] if loc and loc[0] == "body" else list(loc):
        if isinstance(part, str) and (not part.isidentifier() or part in _TYPE_TAGS):
            break
        parts.append(str(part))
    return ".".join(parts) or None


def install(app: FastAPI, service: ChatService, auth: Auth) -> None:
    """Add the /v1 routes and make every error under /v1 an OpenAI-shaped one."""
    app.include_router(build_router(service, auth))

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return error_response(exc.status, str(exc), exc.type, exc.param, exc.code,
                              exc.retry_after)

    @app.exception_handler(sqlite3.OperationalError)
    async def storage_error(request: Request, exc: sqlite3.OperationalError):
        # A full disk or a locked-out database: say so, in the shape clients parse.
        log.error("storage failed: %s", exc)
        if "full" in str(exc):
            return error_response(507, "the server's disk is full; nothing was stored",
                                  "server_error", code="insufficient_storage")
        return error_response(503, f"the database cannot be written now ({exc}); nothing "
                              "was stored", "server_error", code="storage_unavailable")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            return error_response(400, "the request body is not valid JSON")
        param = _param(first.get("loc", ()))
        return error_response(400, f"{param or 'body'}: {first.get('msg')}", param=param)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # never a plain-text 500
        log.exception("unexpected error")
        return error_response(500, f"internal error: {type(exc).__name__}", "server_error")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if request.url.path.startswith("/v1"):
            return error_response(exc.status_code, str(exc.detail))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
