"""Servers that more than one test module runs against (a pytest plugin, registered by
conftest.py's `pytest_plugins`). Each is function-scoped: one server per test, stopped before
the next test starts, so two never run at once."""

import subprocess

import pytest

from assistant.server import ServeConfig, free_port, serve_in_thread
from storage import Home
from tests.conftest import OUTPUT, copy_model_cache, flywheel, health, wait_for


@pytest.fixture
def api_server(home, tiny_model_dir):
    """A server in this process on the tiny model, for the OpenAI-compatible API: (url, the
    server, its home)."""
    config = ServeConfig(model=str(tiny_model_dir), port=0, poll_interval=0.1,
                         max_tokens_cap=400)
    with serve_in_thread(home, config) as (url, srv):
        yield url, srv, home


@pytest.fixture
def serve_process(tmp_path, embedded_cache):
    """A real `flywheel serve` process on the embedded SmolLM2: (url, its home). Its log is
    test-output/e2e-server.log."""
    home = Home.resolve(tmp_path / "home")
    copy_model_cache(embedded_cache, home)
    port = free_port()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    log = open(OUTPUT / "e2e-server.log", "w")
    proc = subprocess.Popen(flywheel("serve", "--home", str(home.root), "--port", str(port),
                                     "--poll-interval", "0.5"),
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is not None or health(url), 240, "the server to start")
        assert proc.poll() is None, (OUTPUT / "e2e-server.log").read_text()
        yield url, home
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # busy swapping an adapter in: do not hang the suite
            proc.kill()
            proc.wait()
        log.close()
