"""Serving speed of the embedded model, all in one process (so every figure is a ratio or a
time measured side by side, never against a number from another machine):

- `api_over_raw`: tokens/s of one greedy stream through `POST /v1/chat/completions` divided by
  tokens/s of a bare `model.generate` on the same prompt (goal: at least 0.9);
- time to first token with 1 and with 8 concurrent streams, and the 8 streams' combined
  tokens/s with batching on against batching off;
- the time from a promotion (a database row, as `flywheel adapters promote` writes it) to
  the first answer produced by the new adapter.

    python bench/serve.py [--home DIR] [--tokens 128] [--repeats 3]

Prints JSON.
"""

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

from assistant.server import ServeConfig, serve_in_thread
from storage import Home, open_db
from storage import adapters

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]
CONCURRENT = [f"Tell me about the history of the number {n}." for n in range(8)]


def stream_once(url: str, messages: list, max_tokens: int) -> dict:
    """One streamed request: time to first content, total time, tokens, who answered."""
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


def concurrent_streams(url: str, max_tokens: int) -> dict:
    results = [None] * len(CONCURRENT)
    barrier = threading.Barrier(len(CONCURRENT))

    def one(i: int) -> None:
        barrier.wait()
        results[i] = stream_once(url, [{"role": "user", "content": CONCURRENT[i]}], max_tokens)
    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(CONCURRENT))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ttfts = [r["ttft_s"] for r in results]
    return {"ttft_mean_s": round(statistics.mean(ttfts), 3), "ttft_max_s": round(max(ttfts), 3),
            "tokens_per_s_total": round(sum(r["tokens"] for r in results) / wall, 1)}


def random_adapter(server, folder: Path) -> None:
    """A LoRA adapter for the served model with non-zero weights, so its answers differ."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(server.engine.model.name_or_path)
    torch.manual_seed(0)
    peft_model = get_peft_model(base, LoraConfig(r=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    peft_model.save_pretrained(folder)


def promotion_to_answer(url: str, server, home: Home) -> dict:
    adapter_id = adapters.new_adapter_id()
    random_adapter(server, adapters.staging_path(home, adapter_id))
    with open_db(home) as db:
        adapters.publish(db, home, adapter_id, base_model=server.service.model_name,
                         method="sft")
        started = time.perf_counter()
        adapters.promote(db, adapter_id, reason="bench")
    tries = 0
    while True:
        tries += 1
        answer = stream_once(url, [{"role": "user", "content": "Hi!"}], 4)
        if answer["model"] == adapter_id:
            return {"promotion_to_first_answer_s": round(time.perf_counter() - started, 2),
                    "requests_until_then": tries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="FLYWHEEL_HOME to use (default: a new temporary one)")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per request")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each single-stream measure")
    args = parser.parse_args()
    home = Home.resolve(args.home or tempfile.mkdtemp(prefix="flywheel-bench-"))
    config = ServeConfig(port=0)
    with serve_in_thread(home, config) as (url, server):
        stream_once(url, PROMPT, 8)  # warm up both paths
        raw_generate(server, 8)
        api, raw = [], []
        for _ in range(args.repeats):  # interleaved, so drift hits both alike
            raw.append(raw_generate(server, args.tokens))
            api.append(stream_once(url, PROMPT, args.tokens))
        raw_tps = statistics.median(r["tokens"] / r["total_s"] for r in raw)
        api_tps = statistics.median(r["tokens"] / r["total_s"] for r in api)
        single = [stream_once(url, [{"role": "user", "content": CONCURRENT[0]}], args.tokens)
                  for _ in range(args.repeats)]
        batched = concurrent_streams(url, args.tokens)
        server.engine.max_batch_size = 1
        one_at_a_time = concurrent_streams(url, args.tokens)
        server.engine.max_batch_size = config.max_batch_size
        swap = promotion_to_answer(url, server, home)
    report = {
        "model": server.service.model_name, "device": str(server.engine.model.device),
        "dtype": str(server.engine.model.dtype), "tokens_per_request": args.tokens,
        "raw_generate_tokens_per_s": round(raw_tps, 1),
        "api_stream_tokens_per_s": round(api_tps, 1),
        "api_over_raw": round(api_tps / raw_tps, 3),
        "ttft_1_stream_s": round(statistics.median(r["ttft_s"] for r in single), 3),
        "ttft_8_streams": batched,
        "8_streams_without_batching": one_at_a_time,
        "batching_speedup_8_streams": round(batched["tokens_per_s_total"]
                                            / one_at_a_time["tokens_per_s_total"], 2),
        "poll_interval_s": config.poll_interval, **swap,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
