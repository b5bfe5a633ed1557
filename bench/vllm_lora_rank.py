"""What vLLM's `--max-lora-rank` costs: one vLLM server per rank given, each timing the same
4-token greedy request on the base model and on one adapter shaped as `flywheel train` makes
them (rank 16 on every linear layer), all in one run, so the figures are side by side.

    python bench/vllm_lora_rank.py --vllm-python PATH [--ranks 64,16] [--dtype float32]

Prints JSON: per rank, the request's median seconds on the base model and on the adapter,
the adapter's load and its first request. vLLM pads every adapter to `--max-lora-rank`.
"""

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project before bench/

from assistant import models, vllm_process  # noqa: E402
from assistant.server import free_port  # noqa: E402
from bench.serve import random_adapter  # noqa: E402
from storage import Home  # noqa: E402

HI = [{"role": "user", "content": "Hi!"}]


def timed(client: httpx.Client, url: str, model: str) -> float:
    """Seconds for one 4-token greedy answer from `model` (the base or an adapter)."""
    started = time.perf_counter()
    response = client.post(f"{url}/v1/chat/completions", json={
        "model": model, "messages": HI, "max_tokens": 4, "temperature": 0})
    response.raise_for_status()
    return time.perf_counter() - started


def one_rank(args, folder: Path, adapter: Path, rank: int, work: Path) -> dict:
    """Start vLLM with `--max-lora-rank rank`, time the base model and the adapter, stop it."""
    process = vllm_process.start(args.vllm_python, folder, "base", free_port(),
                                 work / f"vllm-{rank}.log", dtype=args.dtype,
                                 max_lora_rank=rank)
    try:
        with httpx.Client(headers={"Authorization": f"Bearer {process.api_key}"},
                          timeout=120) as client:
            for _ in range(3):  # warm up
                timed(client, process.url, "base")
            base = [timed(client, process.url, "base") for _ in range(args.repeats)]
            started = time.perf_counter()
            client.post(f"{process.url}/v1/load_lora_adapter", json={
                "lora_name": "adapter", "lora_path": str(adapter)}).raise_for_status()
            load = time.perf_counter() - started
            first = timed(client, process.url, "adapter")
            lora = [timed(client, process.url, "adapter") for _ in range(args.repeats)]
    finally:
        process.stop()
    return {"max_lora_rank": rank, "base_model_s": round(statistics.median(base), 3),
            "adapter_load_s": round(load, 3), "adapter_first_request_s": round(first, 3),
            "adapter_s": round(statistics.median(lora), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-python", required=True, help="python of vLLM's venv")
    parser.add_argument("--ranks", default="64,16", help="--max-lora-rank values, comma separated")
    parser.add_argument("--dtype", default="float32", help="vLLM's --dtype")
    parser.add_argument("--repeats", type=int, default=5, help="timed requests per model")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flywheel-bench-lora-rank-"))
    with contextlib.redirect_stdout(sys.stderr):  # progress lines; JSON alone on stdout
        folder = models.resolve(None, Home.resolve(str(work))).folder
        random_adapter(folder, work / "adapter")
        results = [one_rank(args, folder, work / "adapter", int(rank), work)
                   for rank in args.ranks.split(",")]
    print(json.dumps({"model": models.EMBEDDED_NAME, "dtype": args.dtype,
                      "adapter": "rank 16, every linear layer (trainer/config.py)",
                      "ranks": results}, indent=2))


if __name__ == "__main__":
    main()
