"""Load and faults against a real `flywheel serve` process on 127.0.0.1 (bounded; loopback
only). Prints JSON:

1. stop string: a request with a 1 MB stop string is refused (time), while an innocent
   request runs beside it (its latency against the same request alone);
2. load: 16 clients x 50 requests (streamed and not), through 3 promotions and 3 rollbacks:
   sent, completed, errors, p50/p95 latency, and each swap's delay (promotion written ->
   /healthz names it) beside the p95 latency of one request (a batch lasts at most that);
3. feedback: 16 writers POST /v1/feedback for a few seconds: writes/s, and every
   acknowledged write found in the database;
4. kill -9 while 16 answers stream and 4 writers write, then a restart: integrity check,
   acknowledged rows lost, unfinished answers stored as interrupted.

    python bench/load.py [--model tiny|PATH] [--clients 16] [--requests 50] [--out FILE]
                         [--phases stop_string,load,feedback,kill_9]

Default model: the embedded SmolLM2 (converted once into the bench's home).
"""

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import urllib3

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assistant.server import free_port  # noqa: E402
from storage import Home, adapters, init_db, open_db, users  # noqa: E402
from storage import chat as store  # noqa: E402

HI = [{"role": "user", "content": "Say something kind about the weather."}]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


class Server:
    """`flywheel serve` as a child process."""

    def __init__(self, home: Home, model: str | None, log: Path):
        self.home, self.model, self.log = home, model, open(log, "a")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> None:
        command = [sys.executable, "-m", "flywheel.cli", "serve", "--home", str(self.home.root),
                   "--port", str(self.port), "--poll-interval", "0.1",
                   "--limit", "requests_per_minute=100000", "--limit", "streams_per_user=16"]
        if self.model:
            command += ["--model", self.model]
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while self.health() is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start; see {self.log.name}")
            time.sleep(0.1)

    def health(self) -> dict | None:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).json()
        except httpx.HTTPError:
            return None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def complete(url: str, key: str, stream: bool, max_tokens: int = 16, **extra) -> dict:
    """One chat request: status, latency, the answer's id (when acknowledged)."""
    started = time.perf_counter()
    body = {"model": "flywheel", "messages": HI, "max_tokens": max_tokens, "temperature": 0.7,
            "stream": stream, **extra}
    headers = {"Authorization": f"Bearer {key}"}
    answer_id, status = None, None
    try:
        if stream:
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers,
                              timeout=600) as r:
                status = r.status_code
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        answer_id = answer_id or json.loads(line[6:]).get("id")
        else:
            r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=600)
            status = r.status_code
            answer_id = r.json().get("id") if status == 200 else None
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    return {"status": status, "seconds": time.perf_counter() - started, "id": answer_id}


def stop_string(server: Server, key: str) -> dict:
    """Three refusals of a 1 MB stop string (the body encoded beforehand: the client's JSON
    encoding is not the server's time), each while an innocent request runs beside it."""
    alone = [complete(server.url, key, False, temperature=0)["seconds"] for _ in range(3)]
    body = json.dumps({"model": "flywheel", "messages": HI, "stop": "x" * 1_000_000}).encode()
    refusals, beside, statuses = [], [], set()
    with httpx.Client(headers={"Authorization": f"Bearer {key}",
                               "Content-Type": "application/json"}, timeout=600) as client:
        for _ in range(3):
            results: dict = {}
            thread = threading.Thread(target=lambda: results.update(
                complete(server.url, key, False, temperature=0)))
            thread.start()
            started = time.perf_counter()
            statuses.add(client.post(f"{server.url}/v1/chat/completions", content=body).status_code)
            refusals.append((time.perf_counter() - started) * 1000)
            thread.join()
            beside.append(results["seconds"])
    return {"status": sorted(statuses), "refused_ms_median": round(statistics.median(refusals), 1),
            "refused_ms_each": [round(r, 1) for r in refusals],
            "innocent_alone_s": round(statistics.median(alone), 3),
            "innocent_beside_it_s": round(statistics.median(beside), 3)}


def load(server: Server, keys: list[str], requests: int, swaps: list[str]) -> dict:
    results: list[dict] = []
    done = threading.Condition()
    total = len(keys) * requests

    def client(i: int, key: str):
        for n in range(requests):
            result = complete(server.url, key, stream=(i + n) % 2 == 0)
            with done:
                results.append(result)
                done.notify_all()

    def wait_until(count: int):
        with done:
            done.wait_for(lambda: len(results) >= count)

    def applied(adapter_id: str | None, batches_before: int) -> dict:
        """Seconds until /healthz names the adapter, the batches started meanwhile (a swap
        goes ahead of queued requests: at most the one the watcher had not yet seen) and
        how many requests were waiting when it was applied."""
        started = time.perf_counter()
        while (health := server.health() or {}).get("adapter") != adapter_id:
            time.sleep(0.01)
        return {"seconds": round(time.perf_counter() - started, 3),
                "batches_started_meanwhile": health["adapter_since_batch"] - batches_before,
                "queued_behind_it": health["queued"]}

    delays = []

    def promoter():
        for i, adapter_id in enumerate(swaps):
            wait_until(total * (2 * i + 1) // (2 * len(swaps) + 1))
            batches = server.health()["batches_started"]
            with open_db(server.home) as db:
                previous = (adapters.active(db) or {}).get("id")
                adapters.promote(db, adapter_id, reason="load bench", force=True)
            delays.append({"promote": adapter_id, **applied(adapter_id, batches)})
            wait_until(total * (2 * i + 2) // (2 * len(swaps) + 1))
            batches = server.health()["batches_started"]
            with open_db(server.home) as db:
                adapters.rollback(db, reason="load bench")
            delays.append({"rollback_to": previous, **applied(previous, batches)})
    threads = [threading.Thread(target=client, args=(i, k)) for i, k in enumerate(keys)]
    threads.append(threading.Thread(target=promoter))
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ok = [r for r in results if r["status"] == 200]
    with open_db(server.home) as db:
        stored = {row[0] for row in db.execute("SELECT id FROM messages WHERE role='assistant'")}
    latencies = [r["seconds"] for r in ok]
    return {"sent": len(results), "completed": len(ok),
            "errors": len(results) - len(ok),
            "error_kinds": sorted({str(r["status"]) for r in results if r["status"] != 200}),
            "lost_answers": sum(1 for r in ok if r["id"] not in stored),
            "latency_p50_s": percentile(latencies, 0.5),
            "latency_p95_s": percentile(latencies, 0.95),
            "requests_per_second": round(len(ok) / wall, 1), "swaps": delays,
            "worst_swap_delay_s": max(d["seconds"] for d in delays) if delays else None,
            "most_batches_before_a_swap": max(d["batches_started_meanwhile"] for d in delays)
            if delays else None,
            "ids": [r["id"] for r in ok]}


def feedback(url: str, keys: list[str], ids: list[str], seconds: float,
             stop: threading.Event | None = None) -> dict:
    """Writers rate answers as fast as they can; returns acknowledged (id, key index) pairs.
    Each writer keeps one connection. urllib3 rather than httpx: the writers share the two
    cores with the server, and httpx spends 0.97 ms of CPU on a request where urllib3 spends
    0.45 ms (the server itself about 1 ms)."""
    acknowledged, errors = [], []
    deadline = time.monotonic() + seconds
    address = urllib3.util.parse_url(url)

    def writer(i: int, key: str):
        pool = urllib3.HTTPConnectionPool(address.host, address.port, maxsize=1, timeout=60,
                                          retries=False)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        n = 0
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            answer = ids[(i * 7919 + n) % len(ids)]
            n += 1
            body = {"id": answer, "rating": "up" if n % 2 else "down", "comment": f"w{i}-{n}"}
            try:
                r = pool.request("POST", "/v1/feedback", body=json.dumps(body), headers=headers)
            except urllib3.exceptions.HTTPError as exc:
                errors.append(type(exc).__name__)
                continue
            if r.status == 200:
                acknowledged.append((answer, f"w{i}-{n}"))
            else:
                errors.append(r.status)
        pool.close()
    started = time.perf_counter()
    threads = [threading.Thread(target=writer, args=(i, k)) for i, k in enumerate(keys)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"acknowledged": acknowledged, "errors": errors,
            "seconds": time.perf_counter() - started}


def lost_feedback(home: Home, acknowledged: list[tuple[str, str]]) -> int:
    with open_db(home) as db:
        found = {(r[0], r[1]) for r in db.execute("SELECT message_id, comment FROM ratings")}
    return sum(1 for pair in acknowledged if pair not in found)


def kill_under_load(server: Server, keys: list[str], ids: list[str]) -> dict:
    results: list[dict] = []
    stop = threading.Event()
    writes: dict = {}

    def streamer(key):
        results.append(complete(server.url, key, stream=True, max_tokens=256))
    streams = [threading.Thread(target=streamer, args=(k,)) for k in keys]
    for t in streams:
        t.start()
    writer = threading.Thread(target=lambda: writes.update(
        feedback(server.url, keys[:4], ids, 600, stop)))
    writer.start()
    while True:  # until answers are generating and their text is on disk
        with open_db(server.home) as db:
            if db.execute("SELECT count(*) FROM partial_answers "
                          "WHERE content != ''").fetchone()[0] >= 4:
                break
        time.sleep(0.02)
    server.kill()
    stop.set()
    for t in streams + [writer]:
        t.join()
    started_ids = [r["id"] for r in results if r["id"]]
    server.start()  # the restart stores what the killed one left unfinished
    with open_db(server.home) as db:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        rows = {r[0]: r[1] for r in db.execute(
            "SELECT id, finish_reason FROM messages WHERE role = 'assistant'")}
        unfinished = db.execute("SELECT count(*) FROM partial_answers").fetchone()[0]
    return {"integrity_check": integrity, "streams_started": len(started_ids),
            "answers_lost": sum(1 for i in started_ids if i not in rows),
            "marked_interrupted": sum(1 for i in started_ids if rows.get(i) == "interrupted"),
            "left_unfinished": unfinished,
            "feedback_acknowledged": len(writes["acknowledged"]),
            "feedback_lost": lost_feedback(server.home, writes["acknowledged"])}


PHASES = ("stop_string", "load", "feedback", "kill_9")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="'tiny' (the tests' model), a folder, or the embedded "
                                        "SmolLM2 when left out")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--feedback-seconds", type=float, default=10)
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated, of {', '.join(PHASES)} (default: all)")
    args = parser.parse_args()
    phases = args.phases.split(",")
    if unknown := set(phases) - set(PHASES):
        parser.error(f"unknown phase {', '.join(sorted(unknown))}; choose from {', '.join(PHASES)}")

    from assistant import models
    from tests.test_engine import make_adapter
    with tempfile.TemporaryDirectory() as tmp:
        home = Home.resolve(Path(tmp) / "home")
        init_db(home)
        model = args.model
        if model == "tiny":
            from tests.tiny import make_tiny_model
            model = str(make_tiny_model(Path(tmp) / "tiny"))
        base = models.resolve(model, home)
        with open_db(home) as db:
            # Curators: a writer may rate any answer (a user, only their own).
            keys = [users.create_key(db, f"client{i}", role="curator")[0]
                    for i in range(args.clients)]
        swaps = [f"ad-load-{i}" for i in range(3)]
        for i, adapter_id in enumerate(swaps):
            make_adapter(base.folder, adapters.staging_path(home, adapter_id), seed=i)
            with open_db(home) as db:
                adapters.publish(db, home, adapter_id, base_model=base.name, method="sft")
        server = Server(home, model, Path(tmp) / "server.log")
        server.start()
        try:
            report = {"model": base.name, "clients": args.clients, "requests": args.requests}
            if "stop_string" in phases:
                report["stop_string"] = stop_string(server, keys[0])
            if "load" in phases:
                report["load"] = load(server, keys, args.requests, swaps)
                ids = report["load"].pop("ids")
            else:  # answers to rate, stored as an API request would store them
                with open_db(home) as db:
                    ids = [store.store_transcript(
                        db, [{"role": "user", "content": f"q{i}"},
                             {"role": "assistant", "content": f"a{i}"}])[1]
                        for i in range(args.clients * args.requests)]
            if "feedback" in phases:
                written = feedback(server.url, keys, ids, args.feedback_seconds)
                report["feedback"] = {
                    "writers": len(keys), "acknowledged": len(written["acknowledged"]),
                    "errors": len(written["errors"]),
                    "writes_per_second": round(len(written["acknowledged"]) / written["seconds"]),
                    "lost": lost_feedback(home, written["acknowledged"])}
            if "kill_9" in phases:
                report["kill_9"] = kill_under_load(server, keys, ids)
        finally:
            if server.proc.poll() is None:
                server.stop()
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
