"""Training runs: what was trained, on which data, from which starting point, how it went.

A run is `running` from its start until it `succeeded` or `failed`. A run still marked
`running` while no process holds the training lock (storage/lock.py) was interrupted: it can
be resumed (`flywheel train --resume`) or is abandoned by the next fresh run.
"""

import json
import os
from datetime import datetime, timezone

import sqlite_utils

from storage import paging
from storage.db import present, utc_now
from storage.paging import Page


def start(db: sqlite_utils.Database, *, base_model: str, method: str, config: dict,
          manifest: dict, start_from: str | None = None) -> str:
    """Record a new run as `running` and return its id (run-<UTC time>-<4 hex digits>)."""
    run_id = f"run-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
    db.table("training_runs").insert({
        "id": run_id, "status": "running", "base_model": base_model, "method": method,
        "config": json.dumps(config, default=str), "manifest": json.dumps(manifest),
        "start_from": start_from, "examples": manifest.get("count"),
        "progress": json.dumps({"phase": "starting"})})
    return run_id


def set_progress(db: sqlite_utils.Database, run_id: str, **fields) -> None:
    """Merge `fields` (phase, stage, step, max_steps, loss, eval_loss, ...) into the run's live
    progress, which the admin page polls. Called at every training step: it reads the
    progress column alone, not the run's (large) manifest."""
    current = db.execute("SELECT progress FROM training_runs WHERE id = ?", [run_id]).fetchone()
    progress = {**json.loads(current[0] or "{}"), **fields, "updated_at": utc_now()}
    db.table("training_runs").update(run_id, {"progress": json.dumps(progress, default=str)})


def note_task_done(db: sqlite_utils.Database, run_id: str, line: str) -> None:
    """Add `line` (what a finished task did: "selecting feedback: 412 examples") to the
    current phase's list in the run's progress; the admin page shows it under the phase."""
    current = db.execute("SELECT progress FROM training_runs WHERE id = ?", [run_id]).fetchone()
    progress = json.loads(current[0] or "{}") if current else {}
    finished = progress.get("finished", {})
    finished.setdefault(progress.get("phase", "data"), []).append(line)
    set_progress(db, run_id, finished=finished)


def set_manifest(db: sqlite_utils.Database, run_id: str, manifest: dict,
                 method: str | None = None) -> None:
    """The run's data, once built (and the method picked for it, when given)."""
    changes = {"manifest": json.dumps(manifest), "examples": manifest.get("count")}
    if method is not None:
        changes["method"] = method
    db.table("training_runs").update(run_id, changes)


def discard(db: sqlite_utils.Database, run_id: str) -> None:
    """Remove a run that ended in its data phase with nothing to train on: too little data
    is not a run (the admin page and `flywheel runs` show what trained or failed)."""
    db.table("training_runs").delete_where("id = ?", [run_id])


def finish(db: sqlite_utils.Database, run_id: str, *, metrics: dict,
           adapter_id: str | None) -> None:
    """Mark a run `succeeded`, with its metrics and the adapter it published (if any)."""
    db.table("training_runs").update(run_id, {
        "status": "succeeded", "metrics": json.dumps(metrics), "adapter_id": adapter_id,
        "finished_at": utc_now()})


def fail(db: sqlite_utils.Database, run_id: str, error: str) -> None:
    """Mark a run `failed`, with the error that ended it."""
    db.table("training_runs").update(run_id, {"status": "failed", "error": error,
                                              "finished_at": utc_now()})


def get(db: sqlite_utils.Database, run_id: str) -> dict | None:
    """The run with this id, its JSON columns decoded, or None if there is none."""
    rows = list(db["training_runs"].rows_where("id = ?", [run_id]))
    if not rows:
        return None
    row = dict(rows[0])
    for key in ("config", "manifest", "metrics", "progress"):
        row[key] = json.loads(row[key] or "{}")
    return row


_LIGHT = """id, status, base_model, method, error, adapter_id, start_from, examples,
             started_at, finished_at, metrics, progress"""  # all but config and manifest


def _runs(db: sqlite_utils.Database, where: str = "1", args: tuple = (),
          order_by: str = "started_at, id", limit: int = -1) -> list[dict]:
    """Runs without their config and manifest (a manifest lists every example)."""
    rows = db.execute_returning_dicts(
        f"SELECT {_LIGHT} FROM training_runs WHERE {where} ORDER BY {order_by} LIMIT ?",
        [*args, limit])
    for row in rows:
        row["metrics"], row["progress"] = (json.loads(row[k] or "{}")
                                           for k in ("metrics", "progress"))
    return rows


def list_runs(db: sqlite_utils.Database) -> list[dict]:
    """Every run with its config and whole manifest, oldest first (tests, small reports)."""
    return [present(get(db, r["id"]), f"run {r['id']}") for r in _runs(db)]


def page(db: sqlite_utils.Database, limit: int = 20, after: str | None = None) -> Page:
    """A page of runs, newest first, without config and manifest. `after`: the previous
    page's `next`."""
    key = paging.decode(after, 2)
    rows = _runs(db, "(started_at, id) < (?, ?)" if key else "1", tuple(key or ()),
                 "started_at DESC, id DESC", limit + 1)
    return paging.page_of(rows, limit, lambda r: [r["started_at"], r["id"]])


def unfinished(db: sqlite_utils.Database) -> list[dict]:
    """Runs still marked running, newest first (interrupted ones, when nobody holds the
    lock), whole: a resumed run needs its config."""
    return [present(get(db, r["id"]), f"run {r['id']}")
            for r in _runs(db, "status = 'running'", order_by="started_at DESC, id DESC")]


def latest(db: sqlite_utils.Database) -> dict | None:
    """The newest run, whatever its status (what the admin page follows)."""
    return next(iter(_runs(db, order_by="started_at DESC, id DESC", limit=1)), None)


def last_started(db: sqlite_utils.Database) -> dict | None:
    """The newest run that did not fail: new feedback is counted from its start."""
    return next(iter(_runs(db, "status != 'failed'", order_by="started_at DESC, id DESC",
                           limit=1)), None)
