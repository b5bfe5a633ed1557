"""The API fuzzed from its own schema (schemathesis) plus hand-written edge cases, on a real
server: no answer is a 5xx, none hangs. `bench/fuzz.py` runs the same at 1,000+ requests."""

import sys
from pathlib import Path

import pytest

from assistant.server import ServeConfig, serve_in_thread
from assistant.throttle import ThrottleConfig
from storage import open_db, users

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import fuzz  # noqa: E402


@pytest.mark.slow  # hundreds of generated requests against a real server
def test_fuzzed_requests_get_no_5xx_and_no_hang(home, tiny_model_dir):
    with open_db(home) as db:
        users.add_user(db, "fuzzer", "admin", password="fuzzer-password")
        key, _ = users.create_key(db, "fuzzer")
    config = ServeConfig(model=str(tiny_model_dir), port=0, max_tokens_cap=32,
                         throttle=ThrottleConfig(requests_per_minute=100_000, streams_per_user=64))
    with serve_in_thread(home, config) as (url, _):
        report = fuzz.fuzz(url, {"Authorization": f"Bearer {key}"}, examples=15)
    assert report["sent"] >= 100
    assert report["server_errors"] == 0 and report["hangs"] == 0, report["failures"]
    assert {"200", "400", "404", "413"} <= set(report["status_counts"])
