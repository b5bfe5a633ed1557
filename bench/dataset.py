"""A dataset report from feedback made the way users make it: an in-process server on the
embedded model answers a few hundred prompts through `POST /v1/chat/completions` (8 clients
at a time), and simulated raters send thumbs, reasons and corrections through
`POST /v1/feedback`. Some prompts repeat (exactly, or nearly) and some carry personal data,
so deduplication and scrubbing have work to do. Then the pipeline builds SFT, DPO and KTO.

    python bench/dataset.py [--home DIR] [--answers 520] [--max-tokens 40]

Prints JSON: counts per format and source, duplicates dropped, personal data scrubbed, split
sizes, and the seconds the chatting and the dataset build took.
"""

import argparse
import concurrent.futures
import json
import random
import tempfile
import time

import httpx
import openai

from assistant.server import ServeConfig, serve_in_thread
from storage import Home, open_db
from trainer.anchor import PROMPTS
from trainer.dataset import DataConfig, build, token_counter

PERSONAL = [
    "My email is jane.doe@example.com, can you write me a welcome note?",
    "Call me at +1 415-555-2671 and explain {}.",
    "My card 4111 1111 1111 1111 was declined; what is {}?",
    "Our server 192.168.10.24 is slow; tell me about {}.",
    "I pasted my key sk-proj-Zx9vQ2LmN8pR4tY7uW1eK5sD3fG6hJ0a by mistake; anyway, what is {}?",
]


def prompts(n: int, rng: random.Random) -> list[str]:
    """Mostly distinct prompts, ~10% exact repeats, ~5% near repeats, ~8% with personal data."""
    out = []
    for i in range(n):
        roll = rng.random()
        if out and roll < 0.10:
            out.append(rng.choice(out))
        elif out and roll < 0.15:
            out.append(rng.choice(out).rstrip(".?") + " please?")
        elif roll < 0.23:
            out.append(rng.choice(PERSONAL).format(rng.choice(PROMPTS).lower()))
        else:
            out.append(PROMPTS[i % len(PROMPTS)])
    return out


def chat_and_rate(url: str, prompt: str, rng: random.Random, max_tokens: int) -> None:
    api = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=2, timeout=600)
    reply = api.chat.completions.create(model="flywheel", max_tokens=max_tokens,
                                        temperature=0.7, messages=[
                                            {"role": "user", "content": prompt}])
    answer = reply.choices[0].message.content
    up = rng.random() < 0.6
    feedback = {"id": reply.id, "rating": "up" if up else "down",
                "reason": rng.choice(["clear", "accurate"] if up else ["wrong", "too long"])}
    if not up and rng.random() < 0.5:
        feedback["correction"] = (answer.split(".")[0].strip() or "I am not sure") + "."
    httpx.post(f"{url}/v1/feedback", json=feedback, timeout=60).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="FLYWHEEL_HOME (default: a new temporary one)")
    parser.add_argument("--answers", type=int, default=520)
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--skip-chat", action="store_true",
                        help="only build the datasets from the feedback already in --home")
    args = parser.parse_args()
    home = Home.resolve(args.home or tempfile.mkdtemp(prefix="flywheel-data-"))
    rng = random.Random(0)
    todo = prompts(args.answers, rng)
    started = time.perf_counter()
    chat_seconds = None
    if not args.skip_chat:
        with serve_in_thread(home, ServeConfig(port=0)) as (url, server):
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                seeds = [random.Random(i) for i in range(len(todo))]
                list(pool.map(lambda a: chat_and_rate(url, a[0], a[1], args.max_tokens),
                              zip(todo, seeds)))
            chat_seconds = round(time.perf_counter() - started, 1)
    from assistant import models
    count = token_counter(models.resolve(None, home).folder)
    started = time.perf_counter()
    with open_db(home) as db:
        rated = db.execute("SELECT COUNT(DISTINCT message_id) FROM ratings").fetchone()[0]
        datasets, manifest = build(db, DataConfig(), count_tokens=count)
    build_seconds = time.perf_counter() - started
    report = {
        "rated_answers": rated,
        "formats": {fmt: {"train": m["train"], "validation": m["validation"],
                          "sources": m["sources"]} for fmt, m in manifest["formats"].items()},
        "dropped": manifest["dropped"], "scrubbed": manifest["scrubbed"],
        "chat_and_feedback_seconds": chat_seconds,
        "dataset_build_seconds": round(build_seconds, 1), "home": str(home.root),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
