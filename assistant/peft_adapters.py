"""The LoRA adapters loaded into the built-in engine's model, through PEFT: load beside the
others, smoke-test, run as one of them, unload the least recently used. Only the engine's
worker thread calls this (PEFT's adapter state is one per model), so nothing here locks."""

from contextlib import nullcontext
from pathlib import Path

import torch


class PeftAdapters:
    def __init__(self, model, tokenizer, max_loaded: int = 2, smoke_test_tokens: int = 2):
        self.model = model              # becomes a PeftModel once the first adapter is loaded
        self.tokenizer = tokenizer
        self.max_loaded = max_loaded    # the active one + one for rollback
        self.smoke_test_tokens = smoke_test_tokens  # a new adapter's greedy test answer
        self.loaded: list[str] = []     # adapter names in PEFT, least recently used first
        self.pinned: set[str | None] = set()  # in use by a paused batch: never evicted

    def using(self, adapter_id: str | None):
        """Context in which the model runs as `adapter_id` (None: the bare base model)."""
        if adapter_id is None:
            return self.model.disable_adapter() if self.loaded else nullcontext()
        if adapter_id not in self.loaded:
            raise KeyError(f"adapter {adapter_id} is not loaded")
        self.model.set_adapter(adapter_id)
        return nullcontext()

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
        self._load(adapter_id, path)
        try:
            self._smoke_test(adapter_id)
        except Exception:
            self._unload(adapter_id)
            raise
        self.evict(keep=keep | {adapter_id})

    def evict(self, keep: set) -> None:
        """Unload the least recently used adapters beyond `max_loaded`, never one in `keep`
        or `pinned`. Files stay for reloading."""
        keep = keep | self.pinned
        while len(self.loaded) > self.max_loaded:
            victim = next((a for a in self.loaded if a not in keep), None)
            if victim is None:
                return
            self._unload(victim)

    def _load(self, adapter_id: str, path: Path) -> None:
        from peft import PeftModel
        if not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{path} has no adapter_config.json")
        if not self.loaded:
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=adapter_id)
        else:
            try:
                self.model.load_adapter(path, adapter_name=adapter_id)
            except Exception:  # take out whatever layers were injected before it failed
                if adapter_id in self.model.peft_config:
                    self.model.delete_adapter(adapter_id)
                raise
        self.model.eval()
        self.loaded.append(adapter_id)

    def _unload(self, adapter_id: str) -> None:
        if adapter_id not in self.loaded:
            return
        self.loaded.remove(adapter_id)
        if self.loaded:
            self.model.delete_adapter(adapter_id)
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
