"""One vLLM server as Flywheel sees it: its state, and the calls that change which LoRA
adapters it holds (vLLM's runtime LoRA endpoints) and test a new one; vLLM's errors as
Flywheel's. The engine (assistant/engine_vllm.py) decides when to call them."""

from dataclasses import dataclass, field
from pathlib import Path

import httpx

from assistant.inference import RequestError


@dataclass(eq=False)
class Replica:
    """One vLLM server, as this process last saw it."""
    url: str
    up: bool = False
    in_flight: int = 0
    adapters: list[str] = field(default_factory=list)  # loaded in it, least recent first
    problem: str = ""                                  # why it is down

    def status(self) -> dict:
        return {"url": self.url, "state": "up" if self.up else "down",
                "in_flight": self.in_flight, "adapters": list(self.adapters),
                "problem": self.problem}

    def load(self, http: httpx.Client, adapter_id: str, path: Path) -> None:
        """Load a PEFT adapter folder under `adapter_id` (vLLM's runtime LoRA loading)."""
        if not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{path} has no adapter_config.json")
        response = http.post(f"{self.url}/v1/load_lora_adapter",
                             json={"lora_name": adapter_id, "lora_path": str(path)})
        if response.status_code != 200 and "already been loaded" not in response.text:
            raise ValueError(f"vLLM refused adapter {adapter_id}: {message(response)}")
        self.adapters.append(adapter_id)

    def unload(self, http: httpx.Client, adapter_id: str) -> None:
        """Unload an adapter; a replica that is down has forgotten it anyway."""
        if adapter_id in self.adapters:
            self.adapters.remove(adapter_id)
        try:
            http.post(f"{self.url}/v1/unload_lora_adapter", json={"lora_name": adapter_id})
        except httpx.HTTPError:
            pass

    def smoke_test(self, http: httpx.Client, adapter_id: str, tokens: int) -> None:
        """A new adapter must give some text for a short greedy completion before it serves."""
        response = http.post(f"{self.url}/v1/chat/completions", json={
            "model": adapter_id, "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": tokens, "temperature": 0})
        if response.status_code != 200:
            raise ValueError(f"adapter {adapter_id} fails in vLLM: {message(response)}")
        if not (response.json()["choices"][0]["message"]["content"] or "").strip():
            raise ValueError(f"adapter {adapter_id} produces no text")


def unavailable(what: str) -> RequestError:
    """What a request gets while no replica answers: a 503 in OpenAI's shape."""
    return RequestError(f"the inference server (vLLM) {what}; try again in a moment",
                        code="engine_unavailable", status=503)


def message(response: httpx.Response) -> str:
    """vLLM's error message from an OpenAI-shaped error body, or the status line."""
    try:
        body = response.json()
        error = body.get("error", body)
        return str(error.get("message", error) if isinstance(error, dict) else error)[:500]
    except ValueError:
        return f"HTTP {response.status_code}"


def refusal(response: httpx.Response) -> RequestError:
    """A request vLLM refused: its own message, as a 400 (or 503 when it is overloaded)."""
    response.read()
    status = 503 if response.status_code >= 500 else 400
    return RequestError(f"vLLM refused the request: {message(response)}", status=status)
