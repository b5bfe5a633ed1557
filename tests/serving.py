"""A real `flywheel serve` app on 127.0.0.1, in this process: uvicorn in a thread, so tests
can reach the engine and the database directly while clients talk HTTP to it."""

import socket
import threading
import time
from contextlib import contextmanager

import uvicorn

from assistant.server import ServeConfig, build
from storage import Home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(home: Home, config: ServeConfig):
    """Yields (base url, Server); stops uvicorn and the adapter watcher afterwards."""
    server = build(home, config)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(server.app, host="127.0.0.1", port=port,
                                       log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
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
