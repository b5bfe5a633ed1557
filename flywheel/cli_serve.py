"""`flywheel serve`: every flag's default, help and choices come from ServeConfig
(assistant/config.py); `--limit NAME=VALUE` sets any other field."""

import argparse
import dataclasses

from assistant.config import ServeConfig
from flywheel.cli_common import UsageError, add_setting
from storage import Home

# The ServeConfig fields that `flywheel serve` takes as flags of their own (--max-batch-size
# ...); every other field, the limits among them, through --limit NAME=VALUE.
SERVE_FLAGS = ("model", "host", "port", "poll_interval", "max_batch_size", "max_tokens_cap",
               "quantize", "engine", "vllm_url", "vllm_python", "vllm_dtype", "vllm_args")


def add_commands(sub: argparse._SubParsersAction, home: argparse.ArgumentParser) -> None:
    s = sub.add_parser("serve", parents=[home], help="serve the chat page and the API")
    for name in SERVE_FLAGS:  # defaults, help and choices from ServeConfig
        add_setting(s, ServeConfig, name)
    s.add_argument("--limit", action="append", metavar="NAME=VALUE",
                   help="change one limit, e.g. requests_per_minute=60 or max_body_bytes=2000000 "
                        "(README: Limits)")
    s.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from assistant.models import ModelError
    from assistant.server import ServeError, serve
    config = ServeConfig(**{name: getattr(args, name) for name in SERVE_FLAGS})
    try:
        config = with_limits(config, args.limit or []).validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        serve(Home.resolve(args.home), config)
    except (ModelError, ServeError) as exc:
        raise UsageError(str(exc)) from None
    return 0


def with_limits(config, pairs: list[str]):
    """`--limit NAME=VALUE`: a field of ServeConfig or of its ThrottleConfig, typed as there."""
    throttle = config.throttle
    for pair in pairs:
        name, sep, value = pair.partition("=")
        target = next((t for t in (config, throttle) if name in
                       {f.name for f in dataclasses.fields(t)} and name != "throttle"), None)
        if not sep or target is None:
            raise ValueError(f"--limit takes NAME=VALUE with NAME a field of ServeConfig or "
                             f"ThrottleConfig (assistant/config.py), not {pair!r}")
        current = getattr(target, name)
        try:
            typed = (tuple(v.strip() for v in value.split(",") if v.strip())
                     if isinstance(current, tuple) else type(current)(value)
                     if current is not None else value)
        except ValueError:
            kind = {"int": "an integer", "float": "a number"}.get(type(current).__name__,
                                                                 type(current).__name__)
            raise ValueError(f"--limit {name} takes {kind}, not {value!r}") from None
        if target is throttle:
            throttle = dataclasses.replace(throttle, **{name: typed})
        else:
            config = dataclasses.replace(config, **{name: typed})
    return dataclasses.replace(config, throttle=throttle)
