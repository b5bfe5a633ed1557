"""The vLLM engine: the contract of assistant/inference.py, served by one or more vLLM
servers through their OpenAI-compatible HTTP API.

vLLM holds the weights, the KV cache and the batching. This module sends each request to
the least busy replica and streams its answer into a `Stream`, keeps every replica's LoRA
adapters in step with the active one (loaded under the adapter's id through vLLM's runtime
LoRA endpoints, smoke-tested, and only then made the default; a request for the default
adapter that comes during a swap waits for it, as on the built-in engine), and watches each
replica: one that stops answering is marked down at once, and gets its adapters back when it
answers again, without a restart of Flywheel.
"""

import concurrent.futures
import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable

import httpx

from assistant.inference import (
    ACTIVE,
    Completion,
    EngineStatus,
    EngineUnavailable,
    GenerationParams,
    RequestChecks,
    Stream,
    closed_error,
    refused_when_closed,
    storing_pool,
    tidy_end,
)
from assistant.vllm_replica import Replica, refusal, unavailable

log = logging.getLogger("flywheel.vllm")


class VllmEngine:
    """An `InferenceEngine` in front of vLLM servers (see the module's docstring)."""

    def __init__(self, tokenizer, base_name: str, urls: list[str], *, api_key: str | None = None,
                 context_length: int = 2048, max_tokens_cap: int = 1024, max_queued: int = 64,
                 max_messages: int = 256, max_stop_chars: int = 256,
                 max_loaded_adapters: int = 2, health_interval: float = 1.0,
                 timeout: float = 60.0, smoke_test_tokens: int = 1,
                 on_close: Callable[[], None] | None = None):
        self.base_name = base_name
        self.active_adapter: str | None = None
        self.checks = RequestChecks(tokenizer, context_length, max_tokens_cap=max_tokens_cap,
                                    max_messages=max_messages, max_stop_chars=max_stop_chars)
        self.max_queued = max_queued  # requests in flight across the replicas; past it, busy
        self.max_loaded_adapters = max_loaded_adapters  # the active one + one for rollback
        self.smoke_test_tokens = smoke_test_tokens  # a new adapter's greedy test answer
        self.replicas = [Replica(url.rstrip("/")) for url in urls]
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # A read timeout too: a replica that hangs (not only one that dies) fails its requests.
        self._http = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout, connect=5))
        self._served_name = base_name    # vLLM's name for the base model, read from /v1/models
        self._paths: dict[str, Path] = {}  # adapter id -> folder, to load into any replica
        self._previous: str | None = None  # the adapter served before: kept for a rollback
        self._in_use: dict[str | None, int] = {}  # adapter -> requests running on it
        self._lock = threading.Lock()       # counters, _live, replica fields
        self._adapters_lock = threading.Lock()  # one load or unload at a time
        self._live: set[Stream] = set()
        self._requests: set[threading.Thread] = set()
        self.requests_started = 0
        self.swapped_after_request = 0
        self._closed = False
        self._on_close = on_close
        self._storer = storing_pool()
        self._swapper = concurrent.futures.ThreadPoolExecutor(1, "flywheel-vllm-swap")
        self._swaps_pending = 0  # submitted, not yet ended: default requests wait for them
        self._swaps_ended = threading.Condition(self._lock)
        self.swap_wait = timeout  # the longest a default request waits for a swap under way
        self._stopping = threading.Event()
        self.health_interval = health_interval
        for replica in self.replicas:
            self._probe(replica)
        self._monitor = threading.Thread(target=self._watch, name="flywheel-vllm-health",
                                         daemon=True)
        self._monitor.start()

    # ---- the InferenceEngine contract ----------------------------------------------------

    def check(self, messages: list[dict], params: GenerationParams) -> int:
        if self._closed:
            raise closed_error()
        if not any(r.up for r in self.replicas):
            raise unavailable("is not answering")
        with self._lock:
            busy = sum(r.in_flight for r in self.replicas) >= self.max_queued
        return self.checks(messages, params, busy=busy)

    def control_token_in(self, text: str) -> str | None:
        return self.checks.control_token_in(text)

    def chat(self, messages: list[dict], params: GenerationParams | None = None,
             adapter: str | None = ACTIVE, adapter_path: Path | None = None,
             on_finish: Callable[[Completion], None] | None = None,
             on_end: Callable[[Stream], None] | None = None) -> Stream:
        stream = Stream(self._storer, on_finish, on_end)
        thread = threading.Thread(target=self._answer, name="flywheel-vllm-request", daemon=True,
                                  args=(stream, messages, params or GenerationParams(), adapter,
                                        Path(adapter_path) if adapter_path else None))
        with self._lock:
            if self._closed:
                raise closed_error()
            self._live.add(stream)
            self._requests.add(thread)
        thread.start()
        return stream

    def activate(self, adapter_id: str, path: Path) -> concurrent.futures.Future:
        """Load the adapter into every replica that is up and smoke-test it there; only then
        is it the default. A broken one is unloaded again and the future raises; with no
        replica up it raises EngineUnavailable."""
        return self._submit(lambda: self._activate(adapter_id, Path(path)))

    def deactivate(self) -> concurrent.futures.Future:
        return self._submit(lambda: self._serve(None))

    def status(self) -> EngineStatus:
        with self._lock:
            return EngineStatus("vllm", self.active_adapter,
                                sum(r.in_flight for r in self.replicas), self.requests_started,
                                self.swapped_after_request,
                                [r.status() for r in self.replicas])

    def close(self, timeout: float = 60) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for stream in self._live:
                stream.cancel()
            requests = list(self._requests)
        self._stopping.set()
        for thread in requests:  # each sees its cancel at the next token
            thread.join(timeout)
        self._swapper.shutdown(wait=True)
        self._storer.shutdown(wait=True)
        self._monitor.join(timeout)
        self._http.close()
        if self._on_close is not None:
            self._on_close()

    # ---- requests --------------------------------------------------------------------------

    def _answer(self, stream: Stream, messages: list[dict], params: GenerationParams,
                adapter: str | None, path: Path | None) -> None:
        """A request's own thread: pick a replica, stream from it, hand the result on."""
        submitted = time.perf_counter()
        if adapter == ACTIVE:  # as in the built-in engine, a swap goes ahead of a new request
            with self._swaps_ended:
                self._swaps_ended.wait_for(lambda: not self._swaps_pending, self.swap_wait)
        adapter_id = self.active_adapter if adapter == ACTIVE else adapter
        stream.adapter_id = adapter_id
        replica = None
        try:
            replica = self._take_replica(adapter_id)
            if adapter_id is not None and adapter_id not in replica.adapters:
                self._load_for_request(replica, adapter_id, path)
            result = self._stream(replica, stream, messages, params, adapter_id, submitted)
        except httpx.HTTPError as exc:  # the replica died or hung: it is down until it answers
            if replica is not None:
                self._mark_down(replica, f"{type(exc).__name__}: {exc}")
            stream.fail(unavailable("stopped answering"))
        except Exception as exc:
            log.error("request failed: %s", exc)
            stream.fail(exc)
        else:
            stream.end(result)
        finally:
            with self._lock:
                self._live.discard(stream)
                self._requests.discard(threading.current_thread())
                if replica is not None:
                    replica.in_flight -= 1
                    self._in_use[adapter_id] -= 1
                    if not self._in_use[adapter_id]:
                        del self._in_use[adapter_id]

    def _take_replica(self, adapter_id: str | None) -> Replica:
        """The least busy replica that is up, counted as busier by one."""
        with self._lock:
            up = [r for r in self.replicas if r.up]
            if not up:
                raise unavailable("is not answering")
            replica = min(up, key=lambda r: r.in_flight)
            replica.in_flight += 1
            self.requests_started += 1
            self._in_use[adapter_id] = self._in_use.get(adapter_id, 0) + 1
            return replica

    def _stream(self, replica: Replica, stream: Stream, messages: list[dict],
                params: GenerationParams, adapter_id: str | None, submitted: float) -> Completion:
        body = {"model": adapter_id or self._served_name, "messages": messages, "stream": True,
                "stream_options": {"include_usage": True}, "max_tokens": params.max_tokens,
                "temperature": params.temperature, "top_p": params.top_p}
        if params.stop:
            body["stop"] = params.stop
        if params.seed is not None:
            body["seed"] = params.seed
        text, emitted, steps, finish, usage = "", 0, 0, None, None
        if not stream.cancelled.is_set():
            with self._http.stream("POST", f"{replica.url}/v1/chat/completions",
                                   json=body) as response:
                if response.status_code != 200:
                    raise refusal(response)
                for line in response.iter_lines():
                    if stream.cancelled.is_set():  # closing the response aborts it in vLLM
                        break
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[len("data: "):])
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices", []):
                        piece = (choice.get("delta") or {}).get("content") or ""
                        steps += 1 if piece else 0
                        finish = choice.get("finish_reason") or finish
                        text += piece
                        # The built-in engine's rule: no leading or trailing space streamed,
                        # so the pieces add up to exactly the stored answer.
                        shown = text.lstrip()
                        safe = len(tidy_end(shown))
                        if safe > emitted:
                            stream.put(shown[emitted:safe])
                            emitted = safe
                            stream.partial = shown[:safe]
        final = tidy_end(text.lstrip())
        if len(final) > emitted:
            stream.put(final[emitted:])
        stream.partial = final
        cancelled = stream.cancelled.is_set()
        return Completion(
            text=final, adapter_id=adapter_id,
            prompt_tokens=((usage or {}).get("prompt_tokens")
                           or len(self.checks.prompt_ids(messages))),
            # Cut short, vLLM sends no usage: each streamed chunk is one decoding step.
            completion_tokens=(usage or {}).get("completion_tokens", steps),
            finish_reason=("interrupted" if cancelled else
                           "length" if finish == "length" else "stop"),
            latency_ms=(time.perf_counter() - submitted) * 1000)

    # ---- adapters ---------------------------------------------------------------------------

    def _submit(self, fn: Callable[[], object]) -> concurrent.futures.Future:
        if self._closed:
            return refused_when_closed()

        def swap() -> object:
            try:
                return fn()
            finally:
                self._swap_ended()
        with self._lock:
            self._swaps_pending += 1
        try:
            return self._swapper.submit(swap)
        except RuntimeError:  # closed in the meantime
            self._swap_ended()
            return refused_when_closed()

    def _swap_ended(self) -> None:
        """One swap fewer under way; requests waiting for none go on."""
        with self._swaps_ended:
            self._swaps_pending -= 1
            self._swaps_ended.notify_all()

    def _activate(self, adapter_id: str, path: Path) -> str:
        with self._adapters_lock:
            up = [r for r in self.replicas if r.up]
            if not up:
                raise EngineUnavailable("no vLLM replica answers")
            try:
                for replica in up:
                    if adapter_id not in replica.adapters:
                        replica.load(self._http, adapter_id, path)
                        replica.smoke_test(self._http, adapter_id, self.smoke_test_tokens)
            except httpx.HTTPError as exc:
                raise EngineUnavailable(f"vLLM stopped answering while loading: {exc}") from None
            except Exception:
                for replica in up:
                    replica.unload(self._http, adapter_id)
                raise
            self._paths[adapter_id] = path
            self._serve(adapter_id)
            self._evict()
        return adapter_id

    def _serve(self, adapter_id: str | None) -> None:
        with self._lock:
            if adapter_id != self.active_adapter:
                self._previous = self.active_adapter
            self.active_adapter = adapter_id
            self.swapped_after_request = self.requests_started

    def _load_for_request(self, replica: Replica, adapter_id: str, path: Path | None) -> None:
        """A pinned adapter, or the active one on a replica that lacks it, loaded on demand."""
        with self._adapters_lock:
            if adapter_id in replica.adapters:
                return
            path = path or self._paths.get(adapter_id)
            if path is None:
                raise KeyError(f"adapter {adapter_id} is not loaded and has no path")
            replica.load(self._http, adapter_id, path)
            replica.smoke_test(self._http, adapter_id, self.smoke_test_tokens)
            self._paths[adapter_id] = path
            self._evict()

    def _evict(self) -> None:
        """Unload adapters beyond `max_loaded_adapters` that no request uses, least recent
        first; the active one and the one before it (rollback) stay. Files stay on disk."""
        keep = {self.active_adapter, self._previous}
        for replica in self.replicas:
            while len(replica.adapters) > self.max_loaded_adapters:
                with self._lock:
                    victim = next((a for a in replica.adapters
                                   if a not in keep and not self._in_use.get(a)), None)
                if victim is None:
                    break
                replica.unload(self._http, victim)

    # ---- replicas' health -----------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stopping.wait(self.health_interval):
            for replica in self.replicas:
                try:
                    self._probe(replica)
                except Exception:  # the watcher must outlive any one failure
                    log.exception("checking %s failed", replica.url)

    def _probe(self, replica: Replica) -> None:
        """Mark a replica down when /health fails; when it answers again, reload the active
        adapter (and the one kept for rollback) into it before it takes requests."""
        try:
            healthy = self._http.get(f"{replica.url}/health", timeout=5).status_code == 200
            problem = "" if healthy else "/health is not 200"
        except httpx.HTTPError as exc:
            healthy, problem = False, f"{type(exc).__name__}: {exc}"
        if not healthy:
            if replica.up or not replica.problem:
                self._mark_down(replica, problem)
            return
        if replica.up:
            return
        with self._adapters_lock:
            try:
                models = self._http.get(f"{replica.url}/v1/models").json()["data"]
                base = next(m for m in models if not m.get("parent"))
                self._served_name = base["id"]
                self.checks.context_length = base.get("max_model_len") or self.checks.context_length
                replica.adapters = [m["id"] for m in models if m.get("parent")]
                for adapter_id in (self._previous, self.active_adapter):
                    if (adapter_id and adapter_id not in replica.adapters
                            and adapter_id in self._paths):
                        replica.load(self._http, adapter_id, self._paths[adapter_id])
            except Exception as exc:
                self._mark_down(replica, f"{type(exc).__name__}: {exc}")
                return
            with self._lock:
                replica.up, replica.problem = True, ""
        log.warning("vLLM at %s is up, serving %s", replica.url,
                    self.active_adapter or "the base model")

    def _mark_down(self, replica: Replica, problem: str) -> None:
        with self._lock:
            was_up = replica.up
            replica.up, replica.adapters, replica.problem = False, [], problem[:300]
        if was_up:
            log.error("vLLM at %s is down: %s", replica.url, problem)


