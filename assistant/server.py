"""`flywheel serve`: load the model, then serve the chat page at /, the API at /v1 and
/healthz, with the adapter watcher swapping promoted adapters in."""

import gc
import logging
import os
import shlex
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import gradio as gr
import uvicorn
from fastapi import FastAPI

from assistant import api, models, vllm_process
from assistant.auth import Auth, PageApiForRole
from assistant.chat import ChatService
from assistant.config import ServeConfig
from assistant.engine import Engine
from assistant.engine_vllm import VllmEngine
from assistant.guard import Guard
from assistant.inference import InferenceEngine
from assistant.journal import Journal
from assistant.swap import AdapterWatcher
from assistant.throttle import Throttle
from assistant.ui import CSS, build_ui, endpoint_roles, head, theme
from storage import Home, init_db, open_db, partials, users
from storage.db import Checkpointer

log = logging.getLogger("flywheel.server")


class ServeError(Exception):
    """The server must not start as asked; the message is one line for the user."""


@dataclass
class Server:
    app: Guard  # the FastAPI app behind the edge checks
    engine: InferenceEngine
    watcher: AdapterWatcher
    service: ChatService
    checkpointer: Checkpointer
    journal: Journal

    def close(self) -> None:
        """After the HTTP server stopped: no more swaps, running answers stored as
        interrupted, their journal and the database's checkpoint ended cleanly."""
        self.watcher.stop()
        self.engine.close()
        self.journal.stop()
        self.checkpointer.stop()


def build(home: Home, config: ServeConfig) -> Server:
    """Everything `flywheel serve` runs, ready for uvicorn (tests and benches use it too)."""
    init_db(home)
    throttle = Throttle(config.throttle)
    auth = Auth(home, config.host, config.session_hours, throttle)
    with open_db(home) as db:
        if not auth.loopback and not users.has_admin(db):
            raise ServeError(f"refusing to serve on {config.host} without an admin account; "
                             "create one first: flywheel users add NAME --role admin")
    base = models.resolve(config.model, home)
    engine = (vllm_engine(base, home, config) if config.engine == "vllm" else
              local_engine(base, config))
    watcher = AdapterWatcher(engine, home, interval=config.poll_interval)
    watcher.check()  # serve the active adapter from the first request on
    watcher.start()
    with open_db(home) as db:  # answers a killed server left unfinished keep their text
        recovered = partials.recover(db)
    if recovered:
        print(f"Stored {recovered} answers left unfinished by the last run as interrupted",
              flush=True)
    journal = Journal(home, config.journal_interval).start()
    service = ChatService(engine, home, base.name, throttle,
                          max_comment_chars=config.max_comment_chars,
                          max_correction_chars=config.max_correction_chars, journal=journal,
                          catch_up=watcher.catch_up)
    # The schema and its viewer are served by auth.install, to signed-in callers only.
    app = FastAPI(title="Flywheel", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "model": base.name, **asdict(engine.status())}

    api.install(app, service, auth)
    auth.install(app)
    # No run history: Gradio would keep every event's inputs (a new user's password among
    # them) in the browser's localStorage and list them under "Runs". No footer: its links
    # (API, Runs, Settings) are for developers; the page's API is in the README.
    page = build_ui(service, auth, config.model).queue(
        default_concurrency_limit=config.page_concurrency)
    app = gr.mount_gradio_app(app, page, path="/",
                              auth_dependency=auth.gradio_user, run_history=False,
                              footer_links=[], css=CSS, head=head(),
                              theme=theme())
    app.add_middleware(PageApiForRole, auth=auth, roles=endpoint_roles(page))
    app = Guard(app, loopback=auth.loopback, allowed_hosts=config.allowed_hosts,
                max_body_bytes=config.max_body_bytes)
    checkpointer = Checkpointer(home).start()  # writers never wait for a checkpoint's sync
    return Server(app, engine, watcher, service, checkpointer, journal)


def local_engine(base: models.BaseModel, config: ServeConfig) -> Engine:
    """The built-in engine on this process's own copy of the model."""
    started = time.perf_counter()
    model, tokenizer = models.load(base, quantize=config.quantize)
    print(f"Loaded {base.name} on {model.device} ({model.dtype}) in "
          f"{time.perf_counter() - started:.1f}s from {base.folder}", flush=True)
    return Engine(model, tokenizer, base.name, max_batch_size=config.max_batch_size,
                  max_tokens_cap=config.max_tokens_cap, max_queued=config.max_queued,
                  max_messages=config.max_messages, max_stop_chars=config.max_stop_chars,
                  smoke_test_tokens=config.smoke_test_tokens)


def vllm_engine(base: models.BaseModel, home: Home, config: ServeConfig) -> VllmEngine:
    """The vLLM engine: in front of the servers at `vllm_url`, or of one started here."""
    from transformers import AutoConfig, AutoTokenizer
    if bool(config.vllm_url) == bool(config.vllm_python):
        raise ServeError("--engine vllm takes either --vllm-url URL[,URL...] (running vLLM "
                         "servers) or --vllm-python PATH (start one here)")
    if config.quantize:
        raise ServeError("--quantize is for the built-in engine; vLLM takes its own flags "
                         "(--vllm-args)")
    tokenizer = AutoTokenizer.from_pretrained(base.folder)
    context = getattr(AutoConfig.from_pretrained(base.folder), "max_position_embeddings", 2048)
    process, on_close = None, None
    if config.vllm_python:
        print(f"Starting vLLM for {base.name} ...", flush=True)
        try:
            process = vllm_process.start(
                config.vllm_python, base.folder, base.name, free_port(),
                home.root / "vllm.log", timeout=config.vllm_start_timeout,
                max_lora_rank=config.vllm_max_lora_rank, dtype=config.vllm_dtype,
                cpu_kv_cache_gib=config.vllm_cpu_kv_cache_gib,
                extra_args=tuple(shlex.split(config.vllm_args)))
        except vllm_process.VllmStartError as exc:
            raise ServeError(str(exc)) from None
        on_close = process.stop
    urls = [process.url] if process else [u.strip() for u in config.vllm_url.split(",")
                                          if u.strip()]
    engine = VllmEngine(tokenizer, base.name, urls,
                        api_key=process.api_key if process else os.environ.get("VLLM_API_KEY"),
                        context_length=context, max_tokens_cap=config.max_tokens_cap,
                        max_queued=config.max_queued, max_messages=config.max_messages,
                        max_stop_chars=config.max_stop_chars,
                        smoke_test_tokens=config.smoke_test_tokens, on_close=on_close)
    print(f"Serving {base.name} through vLLM at {', '.join(urls)}: "
          f"{sum(r.up for r in engine.replicas)} of {len(urls)} up", flush=True)
    return engine


def serve(home: Home, config: ServeConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = build(home, config)
    # The model, tokenizer and page are a few hundred thousand objects that live as long as
    # the server; out of the garbage collector's sight, its full collections stop walking them
    # (bench/load.py --phases feedback: 1,021-1,170 writes/s with this, 677-1,101 without).
    gc.freeze()
    print(f"Flywheel is serving on http://{config.host}:{config.port} (home: {home.root})",
          flush=True)
    try:
        uvicorn.run(server.app, host=config.host, port=config.port, log_level="warning")
    finally:
        server.close()


@contextmanager
def serve_in_thread(home: Home, config: ServeConfig):
    """The same server on 127.0.0.1 in a background thread of this process (on a free port
    when `config.port` is 0), for tests and benchmarks that also reach into the engine.
    Yields (base url, Server)."""
    server = build(home, config)
    port = config.port or free_port()
    uv = uvicorn.Server(uvicorn.Config(server.app, host="127.0.0.1", port=port,
                                       log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=uv.run, name="flywheel-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        uv.should_exit = True
        thread.join(timeout=30)
        server.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
