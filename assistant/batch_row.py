"""One request as a row of the built-in engine's batch: its prompt and tokens so far, the
text decoded from them, and how it ends (EOS, a stop string, max_tokens or a cancel). The
engine's worker thread owns every row; nothing here locks."""

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from assistant.inference import Completion, GenerationParams, Stream, tidy_end


@dataclass(eq=False)  # compared and hashed by identity: close() keeps a set of them
class Row:
    messages: list[dict]
    params: GenerationParams
    adapter: str | None            # ACTIVE, None (the base model) or an adapter id
    adapter_path: Path | None      # where to load a pinned adapter from, if not loaded yet
    stream: Stream
    # filled in by the worker
    adapter_id: str | None = None
    prompt_ids: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    done: bool = False       # no more tokens wanted
    finished: bool = False   # result handed to the caller
    hit_stop: bool = False
    submitted: float = field(default_factory=time.perf_counter)

    def advance(self, token: int, tokenizer, eos_ids: set[int]) -> None:
        """One new token: decode, cut at a stop string, stream what is safe to show."""
        if self.stream.cancelled.is_set() or token in eos_ids:
            self.done = True
            return
        self.ids.append(token)
        text = tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()
        stop = self.params.stop
        hits = [text.find(s) for s in stop if s in text]
        if hits:  # what comes before a stop string is whole: only its spaces go
            text, self.done, self.hit_stop = text[:min(hits)].rstrip(), True, True
        if len(self.ids) >= self.params.max_tokens:
            self.done = True
        if self.done and not self.hit_stop:
            text = tidy_end(text)
        # Hold back half a UTF-8 character and trailing whitespace (the answer is stored
        # stripped, and the streamed pieces add up to exactly what is stored).
        safe = len(text) if self.done else len(tidy_end(text))
        if not self.done:  # hold back an ending that may be the start of a stop string
            safe -= max((k for s in stop for k in range(1, len(s))
                         if text[:safe].endswith(s[:k])), default=0)
        self.text = text
        if safe > self.emitted:
            self.stream.put(text[self.emitted:safe])
            self.emitted = safe
            self.stream.partial = text[:safe]

    def finish(self) -> Completion:
        """The row is over: stream what was held back; the result to store."""
        self.finished = True
        if not self.hit_stop:  # stopped, cancelled or at the limit: maybe inside a character
            self.text = tidy_end(self.text)
        if self.emitted < len(self.text):
            self.stream.put(self.text[self.emitted:])
        self.stream.partial = self.text
        if self.stream.cancelled.is_set():
            finish = "interrupted"
        elif len(self.ids) >= self.params.max_tokens and not self.hit_stop:
            finish = "length"
        else:
            finish = "stop"
        return Completion(text=self.text, adapter_id=self.adapter_id,
                          prompt_tokens=len(self.prompt_ids), completion_tokens=len(self.ids),
                          finish_reason=finish,
                          latency_ms=(time.perf_counter() - self.submitted) * 1000)


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) for a batch of token lists, padded on the left, as
    decoder-only generation needs (every row's next token lands in the last column)."""
    width = max(len(s) for s in sequences)
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in sequences])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences])
    return ids, mask
