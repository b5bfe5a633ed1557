"""Serving speed, all in one process (so every figure is a ratio or a time measured side by
side, never against a number from another machine), for the built-in engine, vLLM or both:

- for each engine: the combined tokens/s of 1, 8 and 16 concurrent streams, their time to
  first token (mean and p95), and the time from a promotion (a database row, as `flywheel
  adapters promote` writes it) to the first answer produced by the new adapter;
- built-in engine only: `api_over_raw`, tokens/s of one greedy stream through `POST
  /v1/chat/completions` divided by tokens/s of a bare `model.generate` on the same prompt
  (goal: at least 0.9), and 8 streams with batching on against batching off.

    python bench/serve.py [--engine local|vllm|both] [--vllm-python PATH] [--tokens 128]

Prints JSON; with --plot, a PNG of tokens/s against streams for each engine.
"""

import argparse
import contextlib
import itertools
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project before bench/

from assistant import models  # noqa: E402
from assistant.server import ServeConfig, serve_in_thread  # noqa: E402
from storage import (  # noqa: E402
    Home,
    adapters,  # noqa: E402
    open_db,
)

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]
CONCURRENT = [f"Tell me about the history of the number {n}." for n in range(16)]
STREAMS = (1, 8, 16)


def stream_once(url: str, messages: list, max_tokens: int,
                begun: threading.Event | None = None) -> dict:
    """One streamed request: time to first content, total time, tokens, who answered.
    `begun` is set at the first content."""
    started = time.perf_counter()
    first = None
    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=600, json={
            "model": "flywheel", "messages": messages, "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - started
                if begun is not None:
                    begun.set()
            if chunk.get("usage"):
                tokens, model = chunk["usage"]["completion_tokens"], chunk["model"]
    total = time.perf_counter() - started
    return {"ttft_s": first, "total_s": total, "tokens": tokens, "model": model}


def raw_generate(server, max_tokens: int) -> dict:
    """The same prompt through `model.generate` directly, while the engine sits idle."""
    engine = server.engine
    inputs = engine.tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True,
                                                  return_tensors="pt", return_dict=True)
    inputs = inputs.to(engine.model.device)
    started = time.perf_counter()
    with torch.inference_mode():
        out = engine.model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False,
                                    temperature=None, top_p=None, top_k=None,
                                    pad_token_id=engine.tokenizer.pad_token_id)
    tokens = out.shape[1] - inputs["input_ids"].shape[1]
    return {"total_s": time.perf_counter() - started, "tokens": tokens}


def concurrent_streams(url: str, max_tokens: int, streams: int = 8) -> dict:
    """`streams` requests started together: their combined tokens/s and time to first token."""
    results = [None] * streams
    barrier = threading.Barrier(streams)

    def one(i: int) -> None:
        barrier.wait()
        results[i] = stream_once(url, [{"role": "user", "content": CONCURRENT[i]}], max_tokens)
    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ttfts = sorted(r["ttft_s"] for r in results)
    return {"streams": streams, "ttft_mean_s": round(statistics.mean(ttfts), 3),
            "ttft_p95_s": round(ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))], 3),
            "ttft_max_s": round(ttfts[-1], 3),
            "tokens_per_s_total": round(sum(r["tokens"] for r in results) / wall, 1)}


def random_adapter(model_folder: Path, folder: Path, seed: int = 0) -> None:
    """A LoRA adapter shaped as `flywheel train` makes them (rank, alpha, dropout and target
    modules from trainer/config.py), with small random weights: real work for the engine,
    answers still fluent."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trainer.config import SFTSettings
    settings = SFTSettings()
    base = AutoModelForCausalLM.from_pretrained(model_folder)
    torch.manual_seed(seed)
    peft_model = get_peft_model(base, LoraConfig(
        r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
        target_modules=settings.lora_target_modules, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    peft_model.save_pretrained(folder)


def promotion_to_answer(url: str, server, home: Home, model_folder: Path, times: int,
                        streaming: bool = False) -> dict:
    """Publish and promote `times` new adapters one after another; after each commit a
    client sends back-to-back 4-token requests. From the promotion's commit: when the engine
    serves the new adapter (`swap_applied`), and the first token and the end of the first
    answer the new adapter gave. `streaming`: another client's long answer is streaming on
    the old adapter at the commit (it goes on there; the swap and the new request share
    the engine with it). Then the same request without a swap, for scale."""
    figures: dict[str, list[float]] = {"swap_applied_s": [], "first_token_s": [],
                                       "first_answer_s": []}
    tries = []
    for promotion in range(times):
        adapter_id = f"ad-bench-promotion-{'s' if streaming else ''}{promotion}"
        random_adapter(model_folder, adapters.staging_path(home, adapter_id), seed=promotion)
        with another_answer_streaming(url, streaming):
            with open_db(home) as db:
                adapters.publish(db, home, adapter_id, base_model=server.service.model_name,
                                 method="sft")
                started = time.perf_counter()
                adapters.promote(db, adapter_id, reason="bench")
            applied = threading.Thread(target=lambda: figures["swap_applied_s"].append(
                wait_until(lambda: server.engine.active_adapter == adapter_id) - started))
            applied.start()
            for request in itertools.count(1):
                sent = time.perf_counter()
                answer = stream_once(url, [{"role": "user", "content": "Hi!"}], 4)
                if answer["model"] == adapter_id:
                    figures["first_token_s"].append(sent + answer["ttft_s"] - started)
                    figures["first_answer_s"].append(sent + answer["total_s"] - started)
                    tries.append(request)
                    break
            applied.join()
    alone = []  # the floor: the same request on the adapter now serving, no swap under way
    for _ in range(5):
        with another_answer_streaming(url, streaming):
            alone.append(stream_once(url, [{"role": "user", "content": "Hi!"}], 4)["total_s"])
    return {"promotion": {name: {"median": round(statistics.median(values), 2),
                                 "max": round(max(values), 2),
                                 "each": [round(v, 2) for v in values]}
                          for name, values in figures.items()},
            "requests_until_then": tries, "smoke_test_tokens": server.engine.smoke_test_tokens,
            "same_request_without_a_swap_s": round(statistics.median(alone), 2)}


@contextlib.contextmanager
def another_answer_streaming(url: str, on: bool = True):
    """With `on`: another client's long answer, begun (its first token streamed) when the
    block starts, and ended when it ends. Without: nothing."""
    if not on:
        yield
        return
    begun = threading.Event()
    other = threading.Thread(target=stream_once, args=(url, PROMPT, 48, begun))
    other.start()
    begun.wait()
    try:
        yield
    finally:
        other.join()


def promotions(url: str, server, home: Home, model_folder: Path, times: int) -> dict:
    """Promotion to first answer on an idle engine, then with another answer streaming."""
    return {"promotion_idle": promotion_to_answer(url, server, home, model_folder, times),
            "promotion_while_streaming": promotion_to_answer(url, server, home, model_folder,
                                                             times, streaming=True)}


def wait_until(condition, every: float = 0.02) -> float:
    """Poll `condition` (a bench may: it times, it is not a test); when it became true."""
    while not condition():
        time.sleep(every)
    return time.perf_counter()


def local_only(url: str, server, config: ServeConfig, tokens: int, repeats: int) -> dict:
    """The built-in engine against a bare `model.generate`, and its batching on and off."""
    stream_once(url, PROMPT, 8)  # warm up both paths
    raw_generate(server, 8)
    api, raw = [], []
    for _ in range(repeats):  # interleaved, so drift hits both alike
        raw.append(raw_generate(server, tokens))
        api.append(stream_once(url, PROMPT, tokens))
    raw_tps = statistics.median(r["tokens"] / r["total_s"] for r in raw)
    api_tps = statistics.median(r["tokens"] / r["total_s"] for r in api)
    batched = concurrent_streams(url, tokens)
    server.engine.max_batch_size = 1
    one_at_a_time = concurrent_streams(url, tokens)
    server.engine.max_batch_size = config.max_batch_size
    return {"device": str(server.engine.model.device), "dtype": str(server.engine.model.dtype),
            "raw_generate_tokens_per_s": round(raw_tps, 1),
            "api_stream_tokens_per_s": round(api_tps, 1),
            "api_over_raw": round(api_tps / raw_tps, 3),
            "8_streams_without_batching": one_at_a_time,
            "batching_speedup_8_streams": round(batched["tokens_per_s_total"]
                                                / one_at_a_time["tokens_per_s_total"], 2)}


def measure(engine: str, args) -> dict:
    """One engine's figures, on a server of its own in a new home."""
    home = Home.resolve(tempfile.mkdtemp(prefix=f"flywheel-bench-{engine}-"))
    config = ServeConfig(port=0, engine=engine, vllm_python=args.vllm_python,
                         vllm_dtype=args.vllm_dtype)
    folder = models.resolve(config.model, home).folder
    with serve_in_thread(home, config) as (url, server):
        stream_once(url, PROMPT, 8)  # warm up
        report = {"engine": engine}
        if args.only == "promotion":
            return report | promotions(url, server, home, folder, args.promotions) | {
                "poll_interval_s": config.poll_interval}
        if engine == "local":
            report |= local_only(url, server, config, args.tokens, args.repeats)
        report["streams"] = [concurrent_streams(url, args.tokens, n) for n in STREAMS]
        one, *_, most = report["streams"]
        report[f"{most['streams']}_streams_over_1"] = round(most["tokens_per_s_total"]
                                                           / one["tokens_per_s_total"], 2)
        report |= promotions(url, server, home, folder, args.promotions)
        report["poll_interval_s"] = config.poll_interval
    return report


def plot(reports: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for report in reports:
        ax.plot([s["streams"] for s in report["streams"]],
                [s["tokens_per_s_total"] for s in report["streams"]], marker="o",
                label=report["engine"])
    ax.set(xlabel="concurrent streams", ylabel="tokens/s, all streams together",
           title="Serving throughput", xticks=list(STREAMS))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["local", "vllm", "both"], default="local")
    parser.add_argument("--vllm-python", help="python of vLLM's venv (for --engine vllm/both)")
    parser.add_argument("--vllm-dtype", default="auto", help="vLLM's --dtype")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per request")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each single-stream measure")
    parser.add_argument("--promotions", type=int, default=5, help="promotions timed")
    parser.add_argument("--only", choices=["promotion"], help="time only this")
    parser.add_argument("--plot", help="write a PNG of tokens/s against streams here")
    args = parser.parse_args()
    engines = ["local", "vllm"] if args.engine == "both" else [args.engine]
    if "vllm" in engines and not args.vllm_python:
        parser.error("--engine vllm needs --vllm-python PATH")
    with contextlib.redirect_stdout(sys.stderr):  # the servers' progress lines; JSON alone out
        reports = [measure(engine, args) for engine in engines]
    result = {"model": models.EMBEDDED_NAME, "tokens_per_request": args.tokens,
              "engines": reports}
    if len(reports) == 2 and not args.only:
        most = STREAMS[-1]
        result[f"vllm_over_local_at_{most}_streams"] = round(
            reports[1]["streams"][-1]["tokens_per_s_total"]
            / reports[0]["streams"][-1]["tokens_per_s_total"], 2)
    if args.plot and not args.only:
        plot(reports, Path(args.plot))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
