"""The LoRA adapters loaded into the built-in engine's model, through PEFT: load beside the
others, smoke-test, run as one of them, unload the least recently used. Only the engine's
worker thread calls this (PEFT's adapter state is one per model), so nothing here locks.

Inside PEFT each adapter lives in a named slot ("slot-N"). A new adapter that would push
the least recently used one out takes over that one's slot: PEFT's hot-swap copies the new
weights into the slot's tensors (about 15 ms on a 2-core CPU for a rank-8 adapter of a
135M model, against about 150 ms to inject a new adapter's layers), which brings a
promotion to its first answer sooner."""

from contextlib import nullcontext
from pathlib import Path

import torch


class PeftAdapters:
    def __init__(self, model, tokenizer, max_loaded: int = 2, smoke_test_tokens: int = 1):
        self.model = model              # becomes a PeftModel once the first adapter is loaded
        self.tokenizer = tokenizer
        self.max_loaded = max_loaded    # the active one + one for rollback
        self.smoke_test_tokens = smoke_test_tokens  # a new adapter's greedy test answer
        self.loaded: list[str] = []     # adapter ids, least recently used first
        self.pinned: set[str | None] = set()  # in use by a paused batch: never evicted
        self._slots: dict[str, str] = {}  # adapter id -> its slot's name in PEFT
        self._slots_made = 0

    def using(self, adapter_id: str | None):
        """Context in which the model runs as `adapter_id` (None: the bare base model)."""
        if adapter_id is None:
            return self.model.disable_adapter() if self.loaded else nullcontext()
        slot = self.peft_name(adapter_id)
        if self.model.active_adapter != slot:  # PEFT's switch walks every module
            self.model.set_adapter(slot)
        return nullcontext()

    def peft_name(self, adapter_id: str) -> str:
        """The name PEFT knows a loaded adapter by (for a mixed batch's `adapter_names`)."""
        if adapter_id not in self._slots:
            raise KeyError(f"adapter {adapter_id} is not loaded")
        return self._slots[adapter_id]

    def used(self, adapter_ids) -> None:
        """Mark adapters as just used (most recently used last)."""
        for adapter_id in adapter_ids:
            if adapter_id in self.loaded:
                self.loaded.remove(adapter_id)
                self.loaded.append(adapter_id)

    def load_checked(self, adapter_id: str, path: Path | None, keep: set) -> None:
        """Load beside the others and smoke-test; a broken adapter is unloaded again. Then
        unload the least recently used beyond `max_loaded`, but none in `keep`."""
        if path is None:
            raise KeyError(f"adapter {adapter_id} is not loaded and has no path")
        if not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{path} has no adapter_config.json")
        keep = keep | {adapter_id}
        victim = self._least_recent(keep) if len(self.loaded) >= self.max_loaded else None
        if victim is None or not self._take_over(victim, adapter_id, path):
            self._load(adapter_id, path)
        try:
            self._smoke_test(adapter_id)
        except Exception:
            self._unload(adapter_id)
            raise
        self.evict(keep=keep)

    def evict(self, keep: set) -> None:
        """Unload the least recently used adapters beyond `max_loaded`, never one in `keep`
        or `pinned`. Files stay for reloading."""
        while len(self.loaded) > self.max_loaded:
            victim = self._least_recent(keep)
            if victim is None:
                return
            self._unload(victim)

    def _least_recent(self, keep: set) -> str | None:
        """The least recently used adapter that is neither in `keep` nor `pinned`."""
        return next((a for a in self.loaded if a not in keep and a not in self.pinned), None)

    def _take_over(self, victim: str, adapter_id: str, path: Path) -> bool:
        """Copy `adapter_id`'s weights into `victim`'s slot (PEFT's hot-swap: another rank
        or fewer target modules are fine). False when PEFT refuses (another dropout, alpha
        pattern, rsLoRA or DoRA, or modules the slot lacks): the caller loads it anew. The
        victim is unloaded either way."""
        from peft.utils.hotswap import hotswap_adapter
        slot = self._slots[victim]
        try:
            self.model.set_adapter(slot)  # PEFT checks the new config against the active one
            hotswap_adapter(self.model, str(path), adapter_name=slot,
                            torch_device=str(self.model.device))
        except Exception:  # incompatible, or half-copied: the slot goes, as eviction would
            self._unload(victim)
            return False
        self.loaded.remove(victim)
        del self._slots[victim]
        self._slots[adapter_id] = slot
        self.loaded.append(adapter_id)
        return True

    def _load(self, adapter_id: str, path: Path) -> None:
        from peft import PeftModel
        slot = f"slot-{self._slots_made}"
        self._slots_made += 1
        if not self.loaded:
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=slot)
        else:
            try:
                self.model.load_adapter(path, adapter_name=slot)
            except Exception:  # take out whatever layers were injected before it failed
                if slot in self.model.peft_config:
                    self.model.delete_adapter(slot)
                raise
        self.model.eval()
        self._slots[adapter_id] = slot
        self.loaded.append(adapter_id)

    def _unload(self, adapter_id: str) -> None:
        if adapter_id not in self.loaded:
            return
        self.loaded.remove(adapter_id)
        slot = self._slots.pop(adapter_id)
        if self.loaded:
            self.model.delete_adapter(slot)
        else:  # the last adapter: back to the plain model
            self.model = self.model.unload()

    def _smoke_test(self, adapter_id: str) -> None:
        """A new adapter must give finite logits and some text before it serves anyone: one
        short greedy completion, whose every step's logits are checked (the first step's are
        the prompt's, so this is the prefill's check too)."""
        inputs = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": "Say hello."}], add_generation_prompt=True,
            return_tensors="pt", return_dict=True).to(self.model.device)
        with torch.inference_mode(), self.using(adapter_id):
            out = self.model.generate(**inputs, max_new_tokens=self.smoke_test_tokens,
                                      do_sample=False, temperature=None, top_p=None, top_k=None,
                                      pad_token_id=self.tokenizer.pad_token_id,
                                      output_logits=True, return_dict_in_generate=True)
        if not all(torch.isfinite(step).all() for step in out.logits):
            raise ValueError(f"adapter {adapter_id} produces non-finite logits")
        new = out.sequences[0, inputs["input_ids"].shape[1]:]
        if not self.tokenizer.decode(new, skip_special_tokens=True).strip():
            raise ValueError(f"adapter {adapter_id} produces no text")
