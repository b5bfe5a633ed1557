"""Every setting of `flywheel serve`, in one typed config (as TRL's `*Config` dataclasses):
each field has its default and a help line here, and nowhere else. The command line reads
its defaults and help from these fields, and `--limit NAME=VALUE` sets any of them.

Kept free of heavy imports: `flywheel --help` builds its parser from this module."""

from dataclasses import Field, dataclass, field, fields
from typing import Any, Literal, get_args

Engine = Literal["local", "vllm"]
Quantize = Literal["4bit", "8bit"]


def setting(default: Any = None, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with its help line (`default_factory` for mutable defaults)."""
    if "default_factory" in kwargs:
        return field(metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help})


@dataclass
class ThrottleConfig:
    requests_per_minute: int = setting(
        30, "chat requests per user per minute (the page and API keys together)")
    streams_per_user: int = setting(4, "answers one user may have running at once")
    sign_in_failures_per_account: str = setting(
        "5 per 15 minutes", "failed sign-ins an account may have; then it waits")
    sign_in_failures_per_address: str = setting(
        "20 per 15 minutes", "failed sign-ins an address may have; then it waits")
    concurrent_password_checks: int = setting(
        2, "password hashes computed at once (Argon2 takes 64 MiB and a core per check)")


@dataclass
class ServeConfig:
    model: str | None = setting(
        None, "Hub id, local folder or .gguf file (default: the embedded SmolLM2)")
    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(7860, "port to listen on")
    poll_interval: float = setting(0.05, "seconds between checks for a newly promoted adapter")
    smoke_test_tokens: int = setting(
        1, "tokens of the greedy answer a new adapter must give before it serves")
    max_batch_size: int = setting(8, "concurrent requests generated together in one batch")
    max_tokens_cap: int = setting(1024, "the most new tokens one request may ask for")
    quantize: Quantize | None = setting(
        None, "load the base model in 4 or 8 bits (CUDA with bitsandbytes)")
    engine: Engine = setting(
        "local", "local: the built-in engine; vllm: vLLM servers (README: Serving at scale)")
    vllm_url: str | None = setting(
        None, "running vLLM servers, comma separated: each request goes to the least busy "
              "one (sends $VLLM_API_KEY if set)")
    vllm_python: str | None = setting(
        None, "the python of vLLM's own venv: start vLLM here, on 127.0.0.1 only")
    vllm_dtype: str = setting(
        "auto", "--dtype of a vLLM started here (float32 or bfloat16 on a CPU)")
    vllm_max_lora_rank: int = setting(
        16, "--max-lora-rank of a vLLM started here: the largest adapter rank it serves "
            "(the trainer's lora_r; vLLM pads every adapter to it, and on its CPU build a "
            "4-token request on a rank-16 adapter took 0.52 s at 16, 1.40 s at 64)")
    vllm_args: str = setting(
        "", "further flags for a vLLM started here, e.g. '--tensor-parallel-size 2'")
    vllm_start_timeout: float = setting(600, "seconds a vLLM started here may take to answer")
    vllm_cpu_kv_cache_gib: int = setting(
        4, "the KV cache of a vLLM CPU build started here, in GiB")
    session_hours: float = setting(12.0, "a page sign-in lasts this long")
    journal_interval: float = setting(
        1.0, "seconds between writes of running answers' text (kept after a crash)")
    # ---- limits: a request past one is refused with a message naming the setting ----------
    max_body_bytes: int = setting(
        1 << 20, "one request body, in bytes (a full 2,048-token chat is about 10 KB)")
    max_queued: int = setting(64, "waiting requests; past it, 503 busy")
    page_concurrency: int = setting(
        32, "users each page event (send, save...) runs for at once; Gradio's own default "
            "is one at a time")
    max_messages: int = setting(256, "messages in one API request")
    max_stop_chars: int = setting(
        256, "characters of one stop string (each token is checked against them)")
    max_comment_chars: int = setting(4_000, "a rating's comment or a flag's note")
    max_correction_chars: int = setting(16_000, "a curator's corrected answer (~4k tokens)")
    allowed_hosts: tuple[str, ...] = setting(
        (), "Host names a loopback server also answers to (behind a proxy), comma separated")
    throttle: ThrottleConfig = setting(
        help="rates and sign-in attempts", default_factory=ThrottleConfig)

    def validate(self) -> "ServeConfig":
        """Every choice checked against its Literal type, in one place; a ValueError names
        the setting."""
        for f in fields(self):
            choices = literal_choices(f.type)
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise ValueError(f"{f.name} must be one of {', '.join(choices)}, not {value!r}")
        return self


def literal_choices(annotation: Any) -> tuple[str, ...]:
    """The values a `Literal[...]` (or `Literal[...] | None`) annotation allows; () if none."""
    if getattr(annotation, "__origin__", None) is Literal:
        return tuple(get_args(annotation))
    return tuple(c for arg in get_args(annotation) for c in literal_choices(arg))


def help_of(f: Field) -> str:
    """A setting's help line, with its default, for the command line: in the place of a
    `{default}` in the help, else as " (default: X)" at its end (not for None or "")."""
    text = f.metadata["help"]
    if "{default}" in text:
        return text.replace("{default}", str(f.default))
    shown = f.default not in (None, "")
    return text + (f" (default: {f.default})" if shown else "")
