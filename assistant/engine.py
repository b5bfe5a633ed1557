"""The one owner of the model: generation and adapter swaps run on a single worker thread.

Requests and swaps are jobs in one FIFO queue, so no two threads ever touch the model or
PEFT's adapter state at once, and a swap can only happen between two generations: a request
keeps the adapter it started with until it finishes. Text streams back to the caller through
a per-request queue as tokens are produced.
"""

import concurrent.futures
import logging
import queue
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

log = logging.getLogger("flywheel.engine")

ACTIVE = "active"  # adapter selector: whatever adapter is active when the request starts


@dataclass
class GenerationParams:
    temperature: float = 0.3  # small models ramble when hotter
    top_p: float = 0.95
    max_tokens: int = 256
    seed: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Completion:
    """What a finished (or stopped) generation produced, for storing beside the text."""
    text: str
    adapter_id: str | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop", "length" or "interrupted"
    latency_ms: float


class Stream:
    """Iterate for text pieces as they are generated; `result` is set once iteration ends."""

    _END = object()

    def __init__(self) -> None:
        self._pieces: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        self.result: Completion | None = None

    def __iter__(self) -> Iterator[str]:
        while True:
            item = self._pieces.get()
            if item is Stream._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def cancel(self) -> None:
        """Ask the worker to stop after the current token; the partial text is kept."""
        self.cancelled.set()


class _QueueStreamer(TextStreamer):
    def __init__(self, tokenizer, stream: Stream):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stream = stream

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.stream._pieces.put(text)


class _Cancelled(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool,
                          device=input_ids.device)


class Engine:
    def __init__(self, model, tokenizer, base_name: str, max_loaded_adapters: int = 3):
        self.model = model            # becomes a PeftModel once the first adapter is loaded
        self.tokenizer = tokenizer
        self.base_name = base_name
        self.active_adapter: str | None = None
        self.max_loaded_adapters = max_loaded_adapters
        self._loaded: list[str] = []  # adapter names in PEFT, oldest first
        self._jobs: queue.Queue[Callable[[], None]] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="flywheel-engine", daemon=True)
        self._worker.start()

    # ---- public, thread-safe -------------------------------------------------------------

    def chat(self, messages: list[dict], params: GenerationParams | None = None,
             adapter: str | None = ACTIVE) -> Stream:
        """Queue a generation for a chat; returns at once with a Stream to read from."""
        stream = Stream()
        params = params or GenerationParams()
        self._jobs.put(lambda: self._generate(stream, messages, params, adapter))
        return stream

    def activate(self, adapter_id: str, path: Path) -> concurrent.futures.Future:
        """Load an adapter beside the current one, smoke-test it, then make it the default.
        The future raises if the adapter is broken; the previous adapter keeps serving."""
        return self._submit(lambda: self._activate(adapter_id, Path(path)))

    def deactivate(self) -> concurrent.futures.Future:
        """Serve the bare base model by default again (adapters stay loaded for rollback)."""
        return self._submit(lambda: setattr(self, "active_adapter", None))

    # ---- worker thread only --------------------------------------------------------------

    def _submit(self, fn: Callable[[], object]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()

        def job() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)
        self._jobs.put(job)
        return future

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except Exception:  # a job must never kill the worker
                log.exception("engine job failed")

    def _generate(self, stream: Stream, messages: list[dict], params: GenerationParams,
                  adapter: str | None) -> None:
        started = time.perf_counter()
        adapter_id = self.active_adapter if adapter == ACTIVE else adapter
        try:
            inputs = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True,
            ).to(self.model.device)
            prompt_tokens = inputs["input_ids"].shape[1]
            sample = params.temperature > 0
            if params.seed is not None:
                torch.manual_seed(params.seed)
            kwargs = dict(max_new_tokens=params.max_tokens, do_sample=sample,
                          streamer=_QueueStreamer(self.tokenizer, stream),
                          stopping_criteria=StoppingCriteriaList([_Cancelled(stream.cancelled)]),
                          pad_token_id=self.tokenizer.pad_token_id)
            if sample:
                kwargs.update(temperature=params.temperature, top_p=params.top_p)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            with torch.inference_mode(), self._using(adapter_id):
                output = self.model.generate(**inputs, **kwargs)
            new_tokens = output[0, prompt_tokens:]
            text = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
            hit_eos = len(new_tokens) > 0 and new_tokens[-1].item() in self._eos_ids()
            if stream.cancelled.is_set():
                finish = "interrupted"
            elif hit_eos or len(new_tokens) < params.max_tokens:
                finish = "stop"
            else:
                finish = "length"
            stream.result = Completion(text=text.strip(), adapter_id=adapter_id,
                                       prompt_tokens=prompt_tokens,
                                       completion_tokens=len(new_tokens), finish_reason=finish,
                                       latency_ms=(time.perf_counter() - started) * 1000)
        except Exception as exc:
            log.exception("generation failed")
            stream._pieces.put(exc)
        finally:
            stream._pieces.put(Stream._END)

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        return ids | {self.tokenizer.eos_token_id}

    def _using(self, adapter_id: str | None):
        """Context in which the model runs as `adapter_id` (None: the bare base model)."""
        from contextlib import nullcontext
        if adapter_id is None:
            return self.model.disable_adapter() if self._loaded else nullcontext()
        if adapter_id not in self._loaded:
            raise KeyError(f"adapter {adapter_id} is not loaded")
        self.model.set_adapter(adapter_id)
        return nullcontext()

    def _activate(self, adapter_id: str, path: Path) -> str:
        if adapter_id not in self._loaded:
            self._load(adapter_id, path)
        try:
            self._smoke_test(adapter_id)
        except Exception:
            self._unload(adapter_id)
            raise
        self.active_adapter = adapter_id
        self._evict()
        return adapter_id

    def _load(self, adapter_id: str, path: Path) -> None:
        from peft import PeftModel
        if not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{path} has no adapter_config.json")
        if not self._loaded:
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=adapter_id)
        else:
            self.model.load_adapter(path, adapter_name=adapter_id)
        self.model.eval()
        self._loaded.append(adapter_id)

    def _unload(self, adapter_id: str) -> None:
        if adapter_id in self._loaded and len(self._loaded) > 1:
            self.model.delete_adapter(adapter_id)
            self._loaded.remove(adapter_id)
        elif adapter_id in self._loaded:  # the only adapter: back to the plain model
            self.model = self.model.unload()
            self._loaded.clear()

    def _evict(self) -> None:
        """Keep the active adapter and the few before it (for rollback); drop older ones."""
        while len(self._loaded) > self.max_loaded_adapters:
            oldest = next(a for a in self._loaded if a != self.active_adapter)
            self._unload(oldest)

    def _smoke_test(self, adapter_id: str) -> None:
        """A new adapter must give finite logits and some text before it serves anyone."""
        inputs = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": "Say hello."}], add_generation_prompt=True,
            return_tensors="pt", return_dict=True).to(self.model.device)
        with torch.inference_mode(), self._using(adapter_id):
            logits = self.model(**inputs).logits
            if not torch.isfinite(logits).all():
                raise ValueError(f"adapter {adapter_id} produces non-finite logits")
            out = self.model.generate(**inputs, max_new_tokens=8, do_sample=False,
                                      temperature=None, top_p=None, top_k=None,
                                      pad_token_id=self.tokenizer.pad_token_id)
        text = self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        if not text.strip():
            raise ValueError(f"adapter {adapter_id} produces no text")
