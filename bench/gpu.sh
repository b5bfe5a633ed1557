#!/usr/bin/env bash
# Issue 18's GPU benchmarks as one prepared run (meant to end within 8 minutes on one H200):
# bench/serve.py on the built-in engine (CUDA, bf16) and, when vLLM is installed, on vLLM
# (bf16) in the same run; then bench/train.py on CUDA. Prints one JSON on stdout.
#
#   bash bench/gpu.sh                                      # built-in engine and training
#   VLLM_PYTHON=/path/to/vllm-venv/bin/python bash bench/gpu.sh   # and vLLM beside it
#
# `python3` (or $PYTHON) must hold torch with CUDA. On a machine with no network (the
# `device` tool's), Flywheel's other packages travel as wheels in .whl/ and are installed
# into /tmp/site first (the device README says how to download them).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "bench/gpu.sh: no CUDA GPU here (torch.cuda.is_available() is false)" >&2
  exit 2
fi

out=$(mktemp -d)
engine=(--engine local)
if [ -n "${VLLM_PYTHON:-}" ]; then
  engine=(--engine both --vllm-python "$VLLM_PYTHON" --vllm-dtype bfloat16)
fi
# Each part has its own time limit, so one that hangs still leaves the other's figures.
timeout "${SERVE_SECONDS:-330}" "$py" bench/serve.py "${engine[@]}" --plot "$out/serve.png" \
  > "$out/serve.txt" 2> "$out/serve.err" || echo "exit $?" > "$out/serve.failed"
timeout "${TRAIN_SECONDS:-120}" "$py" bench/train.py \
  > "$out/train.txt" 2> "$out/train.err" || echo "exit $?" > "$out/train.failed"

"$py" - "$out" <<'EOF'
import json
import sys
from pathlib import Path

import torch

out = Path(sys.argv[1])


def last_json(part: str) -> dict:
    """The JSON a bench printed last (a line "{" opens it), or why there is none."""
    text = (out / f"{part}.txt").read_text()
    starts = [i for i, line in enumerate(text.splitlines()) if line == "{"]
    failed = out / f"{part}.failed"
    if not starts:
        tail = (out / f"{part}.err").read_text()[-600:]
        return {"error": failed.read_text().strip() if failed.exists() else "no JSON",
                "stderr_tail": tail}
    return json.loads("\n".join(text.splitlines()[starts[-1]:]))


print(json.dumps({"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                  "serve": last_json("serve"), "train": last_json("train"),
                  "plot": str(out / "serve.png")}, indent=2))
EOF
