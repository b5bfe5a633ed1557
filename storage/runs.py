"""Training runs: what was trained, on which data, how it went."""

import json
import os
from datetime import datetime, timezone

import sqlite_utils

from storage.db import utc_now


def start(db: sqlite_utils.Database, *, base_model: str, method: str, config: dict,
          manifest: dict) -> str:
    run_id = f"run-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
    db["training_runs"].insert({"id": run_id, "status": "running", "base_model": base_model,
                                "method": method, "config": json.dumps(config, default=str),
                                "manifest": json.dumps(manifest)})
    return run_id


def finish(db: sqlite_utils.Database, run_id: str, *, metrics: dict,
           adapter_id: str | None) -> None:
    db["training_runs"].update(run_id, {"status": "succeeded", "metrics": json.dumps(metrics),
                                        "adapter_id": adapter_id, "finished_at": utc_now()})


def fail(db: sqlite_utils.Database, run_id: str, error: str) -> None:
    db["training_runs"].update(run_id, {"status": "failed", "error": error, "finished_at": utc_now()})


def get(db: sqlite_utils.Database, run_id: str) -> dict | None:
    rows = list(db["training_runs"].rows_where("id = ?", [run_id]))
    if not rows:
        return None
    row = dict(rows[0])
    for key in ("config", "manifest", "metrics"):
        row[key] = json.loads(row[key] or "{}")
    return row


def list_runs(db: sqlite_utils.Database) -> list[dict]:
    return [get(db, r["id"]) for r in db["training_runs"].rows_where(order_by="started_at", select="id")]
