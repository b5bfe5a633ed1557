"""The built-in engine (an `InferenceEngine`, see assistant/inference.py): transformers on
this process's own model. Generation and adapter swaps run on a single worker thread.

Requests and swaps are jobs in one FIFO queue, so no two threads ever touch the model or
PEFT's adapter state at once. A swap goes ahead of queued requests and does not wait for the
running batch to end: at the next decoding step the batch pauses, the new adapter is loaded
and smoke-tested, and the batch goes on. A batch on one adapter goes on where it was, with
its KV cache; a batch that mixes adapters or runs on the bare base model restarts, its rows
re-reading what they have generated so far. A request keeps the adapter it started with
until it finishes. Requests that sample
the same way are generated together as one left-padded batch (up to `max_batch_size`); one
that arrives while a batch runs joins it at the next token step (the batch restarts with the
newcomer, its rows re-reading what they have generated so far), so nobody waits for a long
answer to end. Rows
on different adapters share a batch through PEFT's mixed-adapter inference
(`adapter_names`). Text streams back to each caller through its own queue, token by token,
and a finished answer is stored on a separate thread while the batch goes on."""

import collections
import concurrent.futures
import logging
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Collection, cast

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from assistant import models
from assistant.batch_row import Row, left_pad
from assistant.inference import (
    ACTIVE,
    Completion,
    EngineStatus,
    GenerationParams,
    RequestChecks,
    Stream,
    closed_error,
    refused_when_closed,
    storing_pool,
)
from assistant.peft_adapters import PeftAdapters

log = logging.getLogger("flywheel.engine")

PEFT_NO_ADAPTER = "__base__"  # PEFT's own name for "no adapter" in a mixed-adapter batch


class _StepHook(StoppingCriteria):
    """Runs once per decoding step with every row's tokens so far: decodes each live row's
    new token, streams the text, and ends a row on EOS, a stop string, its own max_tokens or
    a cancel (so a cancel takes effect within one step); a finished row is stored at once.
    A waiting swap runs right here, between two steps, when the batch runs on one adapter
    (`resume_as`): the batch then goes on with its KV cache, which saves re-reading every
    row (on a 2-core CPU a promotion reaches users about 0.1 s sooner). Otherwise, and when
    requests that could join are waiting and there is room, it stops the whole batch
    (`preempted`) so the engine can run the swap and restart the batch with the newcomers."""

    def __init__(self, engine: "Engine", rows: list[Row], may_preempt: bool,
                 resume_as: str | None):
        self.engine, self.rows, self.may_preempt = engine, rows, may_preempt
        self.resume_as = resume_as
        self.preempted = False

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return cast(torch.BoolTensor, self._step(input_ids))

    def _step(self, input_ids: torch.Tensor) -> torch.Tensor:
        last = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, last):
            if not row.done:
                row.advance(token, self.engine.tokenizer, self.engine.eos_ids)
                if row.done:
                    self.engine._complete(row)
        live = [r for r in self.rows if not r.done]
        if live and self.resume_as is not None and self.engine._swap_waiting():
            # Out of generate's inference mode: a new adapter's weights must stay ordinary
            # tensors (PEFT sets requires_grad on them when it switches adapters).
            with torch.inference_mode(False):
                self.engine._run_swaps(paused=live)
                # The smoke test switched PEFT's active adapter; this batch's comes back.
                self.engine.adapters.using(self.resume_as)
        if self.may_preempt and live and (self.engine._swap_waiting() or (
                len(live) < self.engine.max_batch_size
                and self.engine._has_joinable(self.rows[0].params.batch_key()))):
            self.preempted = True
            return torch.ones(len(self.rows), dtype=torch.bool, device=input_ids.device)
        return torch.tensor([r.done for r in self.rows], dtype=torch.bool, device=input_ids.device)


class Engine:
    """The built-in engine; see the module's docstring."""

    def __init__(self, model, tokenizer, base_name: str, *, max_batch_size: int = 8,
                 max_loaded_adapters: int = 2, max_tokens_cap: int = 1024,
                 context_length: int | None = None, max_queued: int = 64,
                 max_messages: int = 256, max_stop_chars: int = 256,
                 smoke_test_tokens: int = 1):
        self.adapters = PeftAdapters(model, tokenizer, max_loaded_adapters, smoke_test_tokens)
        self.tokenizer = tokenizer
        self.base_name = base_name
        self.active_adapter: str | None = None
        self.max_batch_size = max_batch_size
        self.max_queued = max_queued  # beyond this many waiting requests, say "busy"
        if context_length is None:
            context_length = int(getattr(model.config, "max_position_embeddings", 2048))
        self.checks = RequestChecks(tokenizer, context_length, max_tokens_cap=max_tokens_cap,
                                    max_messages=max_messages, max_stop_chars=max_stop_chars)
        self.context_length = self.checks.context_length
        self.eos_ids = models.eos_ids(model, tokenizer)
        self.batches_run: collections.deque = collections.deque(maxlen=100)  # recent sizes
        self.batches_started = 0  # `_generate` calls: a batch lasts until its rows finish
        self.swapped_after_batch = 0  # batches_started when the serving adapter last changed
        self._jobs: collections.deque = collections.deque()
        self._wakeup = threading.Condition()
        self._live: set[Row] = set()  # requests not yet ended: close() interrupts them
        self._closed = False
        self._storer = storing_pool()
        self._worker = threading.Thread(target=self._run, name="flywheel-engine", daemon=True)
        self._worker.start()

    @property
    def model(self):
        """The model as it runs now (a PeftModel once an adapter is loaded)."""
        return self.adapters.model

    @property
    def max_loaded_adapters(self) -> int:
        return self.adapters.max_loaded

    @max_loaded_adapters.setter
    def max_loaded_adapters(self, value: int) -> None:
        self.adapters.max_loaded = value

    @property
    def smoke_test_tokens(self) -> int:
        return self.adapters.smoke_test_tokens

    # ---- public, thread-safe -------------------------------------------------------------

    def check(self, messages: list[dict], params: GenerationParams) -> int:
        """Validate a request before anything is stored; returns its prompt token count.
        Raises RequestError with a message for the user."""
        if self._closed:
            raise closed_error()
        return self.checks(messages, params, busy=self.queued() >= self.max_queued)

    def control_token_in(self, text: str) -> str | None:
        return self.checks.control_token_in(text)

    def chat(self, messages: list[dict], params: GenerationParams | None = None,
             adapter: str | None = ACTIVE, adapter_path: Path | None = None,
             on_finish: Callable[[Completion], None] | None = None,
             on_end: Callable[[Stream], None] | None = None) -> Stream:
        """Queue a generation for a chat; returns at once with a Stream to read from.
        `on_finish` stores the result before the stream ends, on a storing thread (never the
        model's); `on_end` runs when the stream ends, also when it fails."""
        stream = Stream(self._storer, on_finish, on_end)
        request = Row(messages, params or GenerationParams(), adapter,
                           Path(adapter_path) if adapter_path else None, stream)
        with self._wakeup:
            if self._closed:
                raise closed_error()
            self._live.add(request)
            self._jobs.append(request)
            self._wakeup.notify()
        return stream

    def activate(self, adapter_id: str, path: Path) -> concurrent.futures.Future:
        """Load an adapter beside the current one, smoke-test it, then make it the default.
        The future raises if the adapter is broken; the previous adapter keeps serving."""
        return self._submit(lambda: self._activate(adapter_id, Path(path)))

    def deactivate(self) -> concurrent.futures.Future:
        """Serve the bare base model by default again (adapters stay loadable for rollback)."""
        return self._submit(lambda: self._serve(None))

    def queued(self) -> int:
        with self._wakeup:
            return len(self._jobs)

    def status(self) -> EngineStatus:
        return EngineStatus("local", self.active_adapter, self.queued(), self.batches_started,
                            self.swapped_after_batch)

    def close(self, timeout: float = 60) -> None:
        """Refuse new requests, interrupt running and queued ones (each is stored as
        interrupted with what it had), wait for every store, and stop the worker."""
        with self._wakeup:
            if self._closed:
                return
            self._closed = True
            for request in self._live:
                request.stream.cancel()
            self._jobs.append(None)  # the worker's signal to stop, after what is queued
            self._wakeup.notify()
        self._worker.join(timeout)
        self._storer.shutdown(wait=True)

    # ---- internals: the worker thread runs all of this (but _submit) ----

    def _submit(self, fn: Callable[[], object]) -> concurrent.futures.Future:
        """Run `fn` on the worker at its next decoding step (a running batch pauses for it):
        ahead of every queued request (behind earlier swaps), so a promotion never waits for
        the queue to drain or for a long answer to end."""
        if self._closed:
            return refused_when_closed()
        future: concurrent.futures.Future = concurrent.futures.Future()

        def job() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)
        with self._wakeup:
            first_request = next((i for i, j in enumerate(self._jobs)
                                  if isinstance(j, Row)), len(self._jobs))
            self._jobs.insert(first_request, job)
            self._wakeup.notify()
        return future

    def _take_joinable(self, key: tuple | None, room: int) -> list[Row]:
        """Requests at the head of the queue that can join a batch sampling as `key`. Only
        the head's unbroken run is taken, so nothing overtakes an earlier request (fair),
        and never past a swap (requests behind it must see the new adapter). A request with
        a seed (key None) runs alone."""
        taken: list[Row] = []
        if key is None:
            return taken
        with self._wakeup:
            while (self._jobs and len(taken) < room and isinstance(self._jobs[0], Row)
                   and self._jobs[0].params.batch_key() == key):
                taken.append(self._jobs.popleft())
        return taken

    def _has_joinable(self, key: tuple | None) -> bool:
        with self._wakeup:
            head = self._jobs[0] if self._jobs else None
        return key is not None and isinstance(head, Row) and head.params.batch_key() == key

    def _swap_waiting(self) -> bool:
        """A swap (or another job that is not a request) is at the head of the queue."""
        with self._wakeup:
            return bool(self._jobs) and callable(self._jobs[0])

    def _run_swaps(self, paused: list[Row]) -> None:
        """Run the swaps at the head of the queue while the `paused` rows wait between two
        decoding steps; their adapters stay loaded whatever the swaps evict."""
        self.adapters.pinned = {r.adapter_id for r in paused}
        try:
            while True:
                with self._wakeup:
                    if not (self._jobs and callable(self._jobs[0])):
                        return
                    job = self._jobs.popleft()
                job()
        finally:
            self.adapters.pinned = set()

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._jobs:
                    self._wakeup.wait()
                job = self._jobs.popleft()
            if job is None:  # closed: everything queued before it has ended
                return
            try:
                if isinstance(job, Row):
                    self._generate(job)
                else:
                    job()
            except Exception:  # a job must never kill the worker
                log.exception("engine job failed")

    def _generate(self, head: Row) -> None:
        """Generate for `head` and whatever joins it. Requests that arrive while a batch runs
        do not wait for it to end: at the next step the batch stops, and goes on with the
        newcomers, its own rows re-reading what they have generated so far (recompute)."""
        self.batches_started += 1
        key = head.params.batch_key()
        rows = self._admit([head] + (self._take_joinable(key, self.max_batch_size - 1)
                                     if key else []))
        while rows:
            try:
                self._run_batch(rows, may_preempt=key is not None)
            except Exception as exc:
                log.exception("generation failed")
                for row in rows:
                    if not row.finished:
                        self._fail(row, exc)
                return
            rows = [r for r in rows if not r.finished]
            if rows:
                self._run_swaps(paused=rows)
                rows += self._admit(self._take_joinable(key, self.max_batch_size - len(rows)),
                                    keep={r.adapter_id for r in rows})

    def _admit(self, batch: list[Row], keep: Collection[str | None] = ()) -> list[Row]:
        """Resolve each request's adapter (loading a pinned one) and tokenize its prompt.
        Returns the rows ready to generate; refused or already cancelled ones are finished."""
        rows = []
        for row in batch:
            row.adapter_id = self.active_adapter if row.adapter == ACTIVE else row.adapter
            row.stream.adapter_id = row.adapter_id
            try:
                if row.adapter_id is not None and row.adapter_id not in self.adapters.loaded:
                    self.adapters.load_checked(
                        row.adapter_id, row.adapter_path,
                        keep=set(keep) | {r.adapter_id for r in batch} | {self.active_adapter})
                row.prompt_ids = self.tokenizer.apply_chat_template(
                    row.messages, add_generation_prompt=True, return_dict=True)["input_ids"]
            except Exception as exc:
                log.error("request refused: %s", exc)
                self._fail(row, exc)
                continue
            if row.stream.cancelled.is_set():  # stopped while waiting: no model call at all
                self._complete(row)
            else:
                rows.append(row)
        return rows

    def _run_batch(self, rows: list[Row], may_preempt: bool) -> None:
        """One `generate` call over `rows`, each continuing from what it has so far."""
        pad = self.tokenizer.pad_token_id
        input_ids, attention = left_pad([r.prompt_ids + r.ids for r in rows], pad)
        params = rows[0].params
        adapters = {r.adapter_id for r in rows}
        # One loaded adapter runs through PEFT's active adapter, which a swap may switch and
        # switch back mid-batch; a mixed batch (PEFT's per-generate `adapter_names` hooks) or
        # the bare model (PEFT's `disable_adapter` context) cannot run a swap inside it.
        one_adapter = next(iter(adapters)) if len(adapters) == 1 else None
        hook = _StepHook(self, rows, may_preempt, resume_as=one_adapter)
        kwargs = dict(max_new_tokens=max(r.params.max_tokens - len(r.ids) for r in rows),
                      do_sample=params.temperature > 0, pad_token_id=pad,
                      stopping_criteria=StoppingCriteriaList([hook]))
        if params.temperature > 0:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=None)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        if len(adapters) == 1:
            context = self.adapters.using(one_adapter)
        else:
            context = nullcontext()
            kwargs["adapter_names"] = [self.adapters.peft_name(r.adapter_id) if r.adapter_id
                                       else PEFT_NO_ADAPTER for r in rows]
        self.adapters.used(r.adapter_id for r in rows)
        self.batches_run.append(len(rows))
        with torch.inference_mode(), context:
            self.model.generate(input_ids=input_ids.to(self.model.device),
                                attention_mask=attention.to(self.model.device), **kwargs)
        if not hook.preempted:
            for row in rows:  # generate ended without the hook (cannot happen; be safe)
                if not row.finished:
                    row.done = True
                    self._complete(row)

    def _complete(self, row: Row) -> None:
        result = row.finish()
        with self._wakeup:
            self._live.discard(row)
        row.stream.end(result)  # stored on a storing thread: the batch goes on at once

    def _fail(self, row: Row, error: BaseException) -> None:
        row.finished = True
        with self._wakeup:
            self._live.discard(row)
        row.stream.fail(error)

    def _activate(self, adapter_id: str, path: Path) -> str:
        previous = self.active_adapter
        if adapter_id not in self.adapters.loaded:
            self.adapters.load_checked(adapter_id, path, keep={previous})
        self._serve(adapter_id)
        self.adapters.evict(keep={adapter_id, previous})
        return adapter_id

    def _serve(self, adapter_id: str | None) -> None:
        self.active_adapter = adapter_id
        self.swapped_after_batch = self.batches_started
