"""`flywheel serve`: load the model, then serve the chat page at /, the API at /v1 and
/healthz, with the adapter watcher swapping promoted adapters in."""

import logging
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import gradio as gr
import uvicorn
from fastapi import FastAPI

from assistant import api, models
from assistant.auth import Auth
from assistant.chat import ChatService
from assistant.engine import Engine
from assistant.swap import AdapterWatcher
from assistant.ui import build_ui
from storage import Home, init_db, open_db
from storage import users
from storage.db import Checkpointer

log = logging.getLogger("flywheel.server")


@dataclass
class ServeConfig:
    model: str | None = None          # Hub id, folder or .gguf; None: the embedded default
    host: str = "127.0.0.1"
    port: int = 7860
    poll_interval: float = 0.5        # seconds between checks for a newly promoted adapter
    max_batch_size: int = 8           # concurrent requests generated together in one batch
    max_tokens_cap: int = 1024        # the most new tokens one request may ask for
    quantize: str | None = None       # "4bit" or "8bit" (CUDA + bitsandbytes)
    session_hours: float = 12.0       # a page sign-in lasts this long


class ServeError(Exception):
    """The server must not start as asked; the message is one line for the user."""


@dataclass
class Server:
    app: FastAPI
    engine: Engine
    watcher: AdapterWatcher
    service: ChatService
    checkpointer: Checkpointer


def build(home: Home, config: ServeConfig) -> Server:
    """Everything `flywheel serve` runs, ready for uvicorn (tests and benches use it too)."""
    init_db(home)
    auth = Auth(home, config.host, config.session_hours)
    with open_db(home) as db:
        if not auth.loopback and not users.has_admin(db):
            raise ServeError(f"refusing to serve on {config.host} without an admin account; "
                             "create one first: flywheel users add NAME --role admin")
    started = time.perf_counter()
    base = models.resolve(config.model, home)
    model, tokenizer = models.load(base, quantize=config.quantize)
    print(f"Loaded {base.name} on {model.device} ({model.dtype}) in "
          f"{time.perf_counter() - started:.1f}s from {base.folder}", flush=True)
    engine = Engine(model, tokenizer, base.name, max_batch_size=config.max_batch_size,
                    max_tokens_cap=config.max_tokens_cap)
    watcher = AdapterWatcher(engine, home, interval=config.poll_interval)
    watcher.check()  # serve the active adapter from the first request on
    watcher.start()
    service = ChatService(engine, home, base.name)
    app = FastAPI(title="Flywheel")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "model": base.name, "adapter": engine.active_adapter}

    api.install(app, service, auth)
    auth.install(app)
    app = gr.mount_gradio_app(app, build_ui(service, auth, config.model), path="/",
                              auth_dependency=auth.gradio_user)
    checkpointer = Checkpointer(home).start()  # writers never wait for a checkpoint's sync
    return Server(app, engine, watcher, service, checkpointer)


def serve(home: Home, config: ServeConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = build(home, config)
    print(f"Flywheel is serving on http://{config.host}:{config.port} (home: {home.root})",
          flush=True)
    uvicorn.run(server.app, host=config.host, port=config.port, log_level="warning")


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
        server.watcher.stop()
        server.checkpointer.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
