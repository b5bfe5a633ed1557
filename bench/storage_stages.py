"""The pipeline stages of bench/storage.py (selection, the dataset build, export, the dedup
check), each run in a child process of the script so that each reports its own peak memory."""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import old_storage as old  # the queries of before, for comparison
from storage import Home, open_db

SCRIPT = Path(__file__).with_name("storage.py")  # the script whose `--stage` runs a stage


def child(args: list[str]) -> dict:
    """Run bench/storage.py's `--stage` in a new process: its JSON (with its own peak memory)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "seconds": round(time.perf_counter() - started, 1)}


def peak_rss_mb() -> int:
    """This process's peak resident memory. VmHWM, not getrusage's ru_maxrss: Linux carries
    ru_maxrss over from the parent across fork and exec, so a child would report the
    bench's own peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def stage(name: str, home: Home, cache: str | None, dedup: bool, out: str | None) -> dict:
    """One pipeline stage in this (child) process; prints its JSON."""
    from storage.embeddings import EmbeddingCache
    from trainer import selection
    from trainer.dataset import MINILM, DataConfig, build_to, default_embedder
    started = time.perf_counter()
    with open_db(home) as db:
        if name == "select":
            counts = {"sft": 0, "dpo": 0, "kto": 0}
            for fmt, _ in selection.examples(db):
                counts[fmt] += 1
            return {"examples": counts, "stage_seconds": round(time.perf_counter() - started, 1)}
        if name == "old-select":
            counts = {fmt: len(rows) for fmt, rows in old.select(db).items()}
            return {"examples": counts, "stage_seconds": round(time.perf_counter() - started, 1)}
        if name == "export":  # the command itself, in this process
            from flywheel.cli import main as flywheel
            argv = ["export", "--home", str(home.root), "--format", "kto", "--out", out,
                    "--report", out + ".json"] + ([] if dedup else ["--no-dedup"])
            assert flywheel(argv) == 0
            report = json.loads(Path(out + ".json").read_text())
            return {"rows": sum(1 for _ in open(out)), "dedup": dedup,
                    "pipeline_seconds": report["seconds"],
                    "write_rows_per_second": report["write_rows_per_second"]}
        if name == "dedup-check":
            return dedup_check(db, cache, int(os.environ.get("DEDUP_CHECK_EXAMPLES", 100_000)))
        embed, store_ = None, None
        if dedup:
            store_ = EmbeddingCache(Path(cache), MINILM)
            embed = default_embedder(store_)
        with tempfile.TemporaryDirectory() as tmp:
            manifest = build_to(db, Path(tmp), DataConfig(deduplicate=dedup), embed=embed,
                                progress=True)
        if store_:
            store_.close()
        return {"formats": {f: {"train": m["train"], "validation": m["validation"]}
                            for f, m in manifest["formats"].items()},
                "dropped": manifest["dropped"], "scrubbed": manifest["scrubbed"],
                "stage_seconds": round(time.perf_counter() - started, 1)}


def dedup_check(db, cache: str, n: int) -> dict:
    """Near-duplicate decisions on the first `n` KTO examples (MiniLM embeddings of prompt
    and answer, cached), made by exact search and by the HNSW index: how often they agree."""
    import numpy as np

    from storage.embeddings import EmbeddingCache
    from trainer import selection
    from trainer.cleaning import Cleaner
    from trainer.dedup import NearDuplicates
    from trainer.dedup_pass import MINILM, default_embedder, prompt_text
    examples, clean = [], Cleaner(None, 1024)  # scrubbed as the pipeline scrubs them
    for fmt, e in selection.examples(db, formats=["kto"]):
        for _, kept in clean.many([(fmt, e)]):  # none when it is broken
            examples.append((prompt_text(kept), kept["completion"][0]["content"],
                             kept["conversation_id"]))
        if len(examples) == n:
            break
    store_ = EmbeddingCache(Path(cache), MINILM)
    embed = default_embedder(store_)
    started = time.perf_counter()
    prompts, answers = [], []
    for start in range(0, len(examples), 4096):
        chunk = examples[start:start + 4096]
        prompts.append(embed([p for p, _, _ in chunk]))
        answers.append(embed([a for _, a, _ in chunk]))
        print(f"\rembedded {start + len(chunk):,} of {len(examples):,}", end="",
              file=sys.stderr, flush=True)
    embed_seconds = time.perf_counter() - started
    store_.close()
    prompts, answers = np.concatenate(prompts), np.concatenate(answers)
    decisions, seconds = {}, {}
    for name, limit in (("exact", 10**9), ("hnsw", 50_000)):
        index, out = NearDuplicates(0.95, 1, exact_limit=limit), []
        started = time.perf_counter()
        for start in range(0, len(examples), 2048):
            out += index.add(prompts[start:start + 2048], [answers[start:start + 2048]],
                             [c for _, _, c in examples[start:start + 2048]])
        decisions[name], seconds[name] = out, round(time.perf_counter() - started, 1)
    exact, hnsw = decisions["exact"], decisions["hnsw"]
    dropped = {k: sum(g is None for g in v) for k, v in decisions.items()}
    return {"examples": len(examples), "embed_seconds": round(embed_seconds, 1),
            "search_seconds": seconds, "near_duplicates_dropped": dropped,
            "same_decision": round(sum(a == b for a, b in zip(exact, hnsw)) / len(exact), 5),
            "kept_by_one_dropped_by_other": sum((a is None) != (b is None)
                                                for a, b in zip(exact, hnsw))}
