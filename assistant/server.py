"""`flywheel serve`: load the model, then serve the chat page at / and the API beside it."""

import logging
import time

import gradio as gr
import uvicorn
from fastapi import FastAPI

from assistant import models
from assistant.chat import ChatService
from assistant.engine import Engine
from assistant.swap import AdapterWatcher
from assistant.ui import build_ui
from storage import Home, init_db

log = logging.getLogger("flywheel.server")


def build_app(service: ChatService, base: models.BaseModel) -> FastAPI:
    app = FastAPI(title="Flywheel")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "model": base.name, "adapter": service.engine.active_adapter}

    return gr.mount_gradio_app(app, build_ui(service), path="/")


def serve(model_spec: str | None, home: Home, host: str = "127.0.0.1", port: int = 7860,
          poll_interval: float = 2.0) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    init_db(home)
    started = time.perf_counter()
    base = models.resolve(model_spec, home)
    model, tokenizer = models.load(base)
    print(f"Loaded {base.name} on {model.device} ({model.dtype}) in "
          f"{time.perf_counter() - started:.1f}s from {base.folder}", flush=True)
    engine = Engine(model, tokenizer, base.name)
    watcher = AdapterWatcher(engine, home, interval=poll_interval)
    watcher.check()  # serve the active adapter from the first request on
    watcher.start()
    app = build_app(ChatService(engine, home, base.name), base)
    print(f"Flywheel is serving on http://{host}:{port} (home: {home.root})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
