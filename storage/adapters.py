"""The adapter registry: immutable adapter folders plus their rows, promotion and rollback.

An adapter is written into `adapters/.staging/<id>` and then renamed to `adapters/<id>`:
the rename is atomic, so the server sees a complete folder or none. The row is inserted
after the rename, so every row points at a complete folder.
"""

import json
import os
import shutil
from pathlib import Path

import sqlite_utils

from storage import ab, paging
from storage.db import present, transaction
from storage.home import Home
from storage.paging import Page


def adapter_id_for_run(run_id: str) -> str:
    """The adapter a run produces is named after the run (run-X -> ad-X), so a resumed run
    publishes under the same id and a half-finished publish is recognised."""
    return "ad-" + run_id.removeprefix("run-")


def staging_path(home: Home, adapter_id: str) -> Path:
    """A fresh folder to write an adapter into before it is published."""
    path = home.staging_dir / adapter_id
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def publish(db: sqlite_utils.Database, home: Home, adapter_id: str, *, base_model: str,
            method: str, run_id: str | None = None, parent_id: str | None = None,
            metrics: dict | None = None, status: str = "candidate") -> dict:
    """Move a finished adapter from staging into place and register it (a candidate, or
    `rejected` when the gate refused it: kept for inspection, never served).

    Safe to repeat after a crash: a folder already moved into place but never registered
    (the process died between the rename and the insert) is registered now."""
    if status not in ("candidate", "rejected"):
        raise ValueError(f"a new adapter is a candidate or rejected, not {status!r}")
    staged, final = home.staging_dir / adapter_id, home.adapters_dir / adapter_id
    if (staged / "adapter_config.json").is_file():
        os.replace(staged, final)  # atomic on one filesystem
    elif not (final / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{staged} holds no adapter_config.json; nothing to publish")
    db.table("adapters").insert({"id": adapter_id, "base_model": base_model, "method": method,
                                 "status": status, "parent_id": parent_id, "run_id": run_id,
                                 "metrics": json.dumps(metrics or {}), "path": str(final)})
    return present(get(db, adapter_id), f"adapter {adapter_id}")


def get(db: sqlite_utils.Database, adapter_id: str) -> dict | None:
    """The adapter with id `adapter_id`, its metrics decoded, or None if there is none."""
    rows = list(db["adapters"].rows_where("id = ?", [adapter_id]))
    return _decode(rows[0]) if rows else None


def list_adapters(db: sqlite_utils.Database) -> list[dict]:
    """Every adapter, oldest first (a nightly run adds one a day: hundreds a year)."""
    return [_decode(r) for r in db["adapters"].rows_where(order_by="created_at, id")]


def page(db: sqlite_utils.Database, limit: int = 50, after: str | None = None) -> Page:
    """A page of adapters, newest first, each with its run's example count (what the
    registry shows). `after`: the previous page's `next`."""
    key = paging.decode(after, 2)
    rows = db.execute_returning_dicts(
        f"""SELECT a.*, r.examples FROM adapters a LEFT JOIN training_runs r ON r.id = a.run_id
            {"WHERE (a.created_at, a.id) < (?, ?)" if key else ""}
            ORDER BY a.created_at DESC, a.id DESC LIMIT ?""", [*(key or []), limit + 1])
    return paging.page_of([_decode(r) for r in rows], limit,
                          lambda r: [r["created_at"], r["id"]])


def active(db: sqlite_utils.Database) -> dict | None:
    """The adapter serving by default now, or None for the bare base model."""
    rows = list(db["adapters"].rows_where("status = 'active'"))
    return _decode(rows[0]) if rows else None


def active_id(db: sqlite_utils.Database) -> str | None:
    """Just the active adapter's id (None: the base model): read on every request, on a
    kept connection, so the query is read to the end (fetchall, not fetchone)."""
    rows = db.execute("SELECT id FROM adapters WHERE status = 'active'").fetchall()
    return rows[0][0] if rows else None


def promote(db: sqlite_utils.Database, adapter_id: str, reason: str = "",
            force: bool = False) -> dict:
    """Make `adapter_id` the active adapter; the one it replaces is retired (still loadable),
    and a running A/B split ends (everyone now gets the new adapter). An adapter the
    evaluation gate rejected is refused (ValueError) unless `force`."""
    with transaction(db):
        target = get(db, adapter_id)
        if target is None:
            raise KeyError(f"no adapter {adapter_id}")
        if target["status"] == "rejected" and not force:
            gate = target["metrics"].get("gate", {})
            raise ValueError(f"{adapter_id} was rejected by the evaluation gate "
                             f"({gate.get('reason', 'no reason recorded')}); "
                             "promote it anyway with --force")
        db.execute("UPDATE adapters SET status = 'retired' WHERE status = 'active'")
        db.execute("UPDATE adapters SET status = 'active' WHERE id = ?", [adapter_id])
        db.execute("INSERT INTO promotions (adapter_id, action, reason) VALUES (?, 'promote', ?)",
                   [adapter_id, reason])
        ab.stop(db, reason=f"{adapter_id} promoted")
    return present(get(db, adapter_id), f"adapter {adapter_id}")


def rollback(db: sqlite_utils.Database, reason: str = "") -> dict | None:
    """Retire the active adapter and bring back the one that was active before it (or the
    bare base model when there was none). Returns the adapter now active, or None."""
    with transaction(db):
        current = active(db)
        if current is None:
            raise LookupError("no adapter is active; nothing to roll back")
        target_id = _previous(db, current["id"])
        target = get(db, target_id) if target_id else None
        db.execute("UPDATE adapters SET status = 'retired' WHERE id = ?", [current["id"]])
        if target:
            db.execute("UPDATE adapters SET status = 'active' WHERE id = ?", [target["id"]])
        db.execute("INSERT INTO promotions (adapter_id, action, reason) VALUES (?, 'rollback', ?)",
                   [target["id"] if target else None, reason])
    return active(db)


def record_event(db: sqlite_utils.Database, adapter_id: str, event: str, detail: str = "") -> None:
    """What the server did with an adapter: 'served' (swapped in) or 'refused' (and why)."""
    db.table("adapter_events").insert({"adapter_id": adapter_id, "event": event, "detail": detail})


def events(db: sqlite_utils.Database, adapter_id: str | None = None,
           limit: int = paging.DEFAULT_PAGE, after: str | None = None) -> Page:
    """A page of what servers did with adapters (one adapter's, or all), oldest first."""
    key = paging.decode(after, 1)
    rows = db.execute_returning_dicts(
        "SELECT * FROM adapter_events WHERE (:adapter IS NULL OR adapter_id = :adapter) "
        "AND id > :after ORDER BY id LIMIT :limit",
        {"adapter": adapter_id, "after": key[0] if key else 0, "limit": limit + 1})
    return paging.page_of(rows, limit, lambda r: [r["id"]])


def latest_events(db: sqlite_utils.Database) -> dict[str, dict]:
    """What a server last did with each adapter ('served', or 'refused' and why), by id."""
    rows = db.execute_returning_dicts(
        "SELECT adapter_id, event, detail, created_at FROM adapter_events "
        "WHERE id IN (SELECT MAX(id) FROM adapter_events GROUP BY adapter_id)")
    return {r.pop("adapter_id"): r for r in rows}


def refused_ids(db: sqlite_utils.Database) -> set[str]:
    """Adapters a server refused to load (broken, incompatible): not offered for serving."""
    return {r[0] for r in db.execute(
        "SELECT DISTINCT adapter_id FROM adapter_events WHERE event = 'refused'").fetchall()}


def servable(db: sqlite_utils.Database, base_model: str) -> list[dict]:
    """Adapters a client may ask for by id: trained on `base_model`, not rejected or refused."""
    refused = refused_ids(db)
    return [a for a in list_adapters(db) if a["base_model"] == base_model
            and a["status"] != "rejected" and a["id"] not in refused]


def _previous(db: sqlite_utils.Database, current_id: str) -> str | None:
    """Replay the promotion log as a stack (promote pushes, rollback pops) to find what was
    serving before `current_id`; adapters rejected since then are skipped."""
    stack: list[str | None] = [None]
    for row in db["promotions"].rows_where(order_by="id"):
        if row["action"] == "promote":
            stack.append(row["adapter_id"])
        elif len(stack) > 1:
            stack.pop()
    below = [a for a in stack if a != current_id]
    while (below and below[-1] is not None
           and present(get(db, below[-1]), f"adapter {below[-1]}")["status"] == "rejected"):
        below.pop()
    return below[-1] if below else None


def _decode(row: dict) -> dict:
    row = dict(row)
    row["metrics"] = json.loads(row["metrics"] or "{}")
    return row
