"""The data under `--home`: `flywheel export` (a training dataset as JSONL), `backup`,
`restore` and `prune` (retention)."""

import argparse
import json
import sys

from flywheel.cli_common import UsageError
from storage import Home, init_db, open_db, write_atomic
from storage.retention import DEFAULT_KEEP_DAYS
from trainer.config import TrainConfig


def add_commands(sub: argparse._SubParsersAction, home: argparse.ArgumentParser) -> None:
    e = sub.add_parser("export", parents=[home], help="write a training dataset as JSONL")
    e.add_argument("--format", required=True, choices=["sft", "dpo", "kto", "openai"])
    e.add_argument("--out", help="file to write (default: standard output)")
    e.add_argument("--split", default="all", choices=["train", "validation", "all"])
    e.add_argument("--model", help="base model whose tokenizer measures length (default: embedded)")
    e.add_argument("--no-length-check", action="store_true",
                   help="skip fitting examples to the context (no tokenizer needed)")
    e.add_argument("--max-length", type=int, default=TrainConfig.max_length,
                   help="tokens per example")
    e.add_argument("--validation-share", type=float, default=TrainConfig.validation_share)
    e.add_argument("--threshold", type=float, default=TrainConfig.near_duplicate_threshold,
                   help="cosine similarity at which examples are near duplicates")
    e.add_argument("--no-dedup", action="store_true",
                   help="keep exact and near duplicates (no embeddings needed)")
    e.add_argument("--report", help="also write the manifest (counts, drops, scrubs) as JSON")
    e.set_defaults(func=cmd_export)

    b = sub.add_parser("backup", parents=[home],
                       help="a consistent copy of the database and adapters (safe while serving)")
    b.add_argument("dir", help="a new folder to write the backup into")
    b.set_defaults(func=cmd_backup)
    r = sub.add_parser("restore", parents=[home], help="make --home the backup in DIR")
    r.add_argument("dir", help="a folder written by flywheel backup")
    r.add_argument("--force", action="store_true",
                   help="replace the database already in --home (stop its server first)")
    r.set_defaults(func=cmd_restore)
    pr = sub.add_parser("prune", parents=[home],
                        help="delete conversations older than --keep-days, and their feedback")
    pr.add_argument("--keep-days", type=float, default=DEFAULT_KEEP_DAYS,
                    help=f"keep conversations active in the last N days "
                         f"(default {DEFAULT_KEEP_DAYS})")
    pr.set_defaults(func=cmd_prune)


def cmd_export(args: argparse.Namespace) -> int:
    """Write a dataset as JSONL: the pipeline streams into a temporary folder, then the rows
    stream into a temporary file, renamed into place when complete."""
    import tempfile
    import time
    from pathlib import Path

    from storage.embeddings import EmbeddingCache
    from trainer.dataset import (
        MINILM,
        DataConfig,
        build_to,
        default_embedder,
        token_counter,
        write_rows,
    )
    home = Home.resolve(args.home)
    init_db(home)
    fmt = "sft" if args.format == "openai" else args.format
    count_tokens = None
    if args.model is not None or not args.no_length_check:
        from assistant import models
        try:
            count_tokens = token_counter(models.resolve(args.model, home).folder)
        except models.ModelError as exc:
            raise UsageError(str(exc)) from None
    started = time.perf_counter()
    config = DataConfig(max_length=args.max_length, validation_share=args.validation_share,
                        near_duplicate_threshold=args.threshold,
                        deduplicate=not args.no_dedup)
    sides = ["train", "validation"] if args.split == "all" else [args.split]
    cache = EmbeddingCache.for_home(home, MINILM) if config.deduplicate else None
    try:
        with tempfile.TemporaryDirectory(prefix=".export-", dir=home.root) as tmp, \
                open_db(home) as db:
            manifest = build_to(db, Path(tmp), config, count_tokens=count_tokens,
                                embed=default_embedder(cache) if cache else None,
                                formats=[fmt], progress=True)
            built = time.perf_counter()
            sources = [Path(tmp) / f"{fmt}-{side}.jsonl" for side in sides]
            if args.out:
                out = Path(args.out)
                partial = out.with_name(f".{out.name}.partial")
                with open(partial, "w") as f:
                    rows = write_rows(sources, args.format, f)
                partial.replace(out)
            else:
                rows = write_rows(sources, args.format, sys.stdout)
    finally:
        if cache:
            cache.close()
    done = time.perf_counter()
    manifest["seconds"] = round(done - started, 2)
    manifest["write_rows_per_second"] = round(rows / max(done - built, 1e-9))
    if args.report:
        write_atomic(Path(args.report), json.dumps(manifest, indent=1))
    summary = {k: {s: v[s] for s in ("train", "validation", "sources")}
               for k, v in manifest["formats"].items()}
    print(f"{rows} {args.format} examples written ({args.split}); formats: "
          f"{json.dumps(summary)}; dropped: {json.dumps(manifest['dropped'])}; scrubbed: "
          f"{json.dumps(manifest['scrubbed'])}; {manifest['seconds']}s", file=sys.stderr)
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from storage.backup import BackupError, backup
    home = Home.resolve(args.home)
    try:
        manifest = backup(home, args.dir)
    except BackupError as exc:
        raise UsageError(str(exc)) from None
    rows = ", ".join(f"{n} {table}" for table, n in manifest["rows"].items())
    copied = len(manifest["adapters"]) - len(manifest["missing_adapters"])
    print(f"backed up {home.root} to {args.dir}: {rows}; {copied} adapter folders; "
          f"{len(manifest['files'])} files with SHA-256 in manifest.json")
    if manifest["missing_adapters"]:
        print(f"warning: registered adapters without a folder: {manifest['missing_adapters']}",
              file=sys.stderr)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from storage.backup import BackupError, restore
    home = Home.resolve(args.home)
    try:
        manifest = restore(home, args.dir, force=args.force)
    except BackupError as exc:
        raise UsageError(str(exc)) from None
    init_db(home)  # a backup from an older Flywheel is migrated now
    rows = ", ".join(f"{n} {table}" for table, n in manifest["rows"].items())
    print(f"restored {args.dir} (taken {manifest['created_at']}) into {home.root}: {rows}; "
          f"every file matched its SHA-256")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from storage.retention import prune
    home = Home.resolve(args.home)
    init_db(home)
    with open_db(home) as db:
        try:
            gone = prune(db, home, args.keep_days)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    parts = [f"{n} {what}" for what, n in gone.items() if n]
    print(f"kept the last {args.keep_days:g} days; removed "
          f"{', '.join(parts) if parts else 'nothing'}")
    return 0
