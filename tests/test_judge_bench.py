"""bench/judge.py end to end on the tiny model: both judges learn from correction pairs and
are scored on held-out ones, and the report says how well each ranked them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a subprocess that trains a reward model

ROOT = Path(__file__).resolve().parent.parent


def test_the_judge_bench_scores_both_judges_on_held_out_pairs(tiny_model_dir, tmp_path):
    out = tmp_path / "judge.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "judge.py"), "--model", str(tiny_model_dir),
         "--trait", "signoff", "--train", "12", "--heldout", "10", "--tokens", "8",
         "--batch", "8", "--epochs", "1", "--home", str(tmp_path / "home"), "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    # The tiny model never signs off: every answer is corrected, and each makes a pair.
    assert report["pairs"] == {"train": 12, "heldout": 10} and report["answers"] == 24
    for figures in report["judges"].values():
        low, high = figures["interval"]
        assert 0 <= low <= figures["accuracy"] <= high <= 1
    # A sign-off line in every corrected answer is plain to the embeddings' judge.
    assert report["judges"]["embeddings"]["accuracy"] == 1.0
    assert "embeddings        1.000" in done.stdout  # the table beside the JSON
