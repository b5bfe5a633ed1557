"""`flywheel backup DIR` and `flywheel restore DIR`: a consistent copy of a home, and back.

A backup is a folder:

    flywheel.db       the database, copied with SQLite's online backup API: one consistent
                      snapshot, taken while the server and a trainer go on writing (WAL lets
                      writers continue while the copy reads)
    adapters/<id>/    the folder of every adapter the snapshot registers (folders are
                      immutable once published, and published before their row, so each
                      is complete)
    manifest.json     SHA-256 and size of every file, the schema version, row counts

It is written under a temporary name and renamed when complete. The embedding cache and
training scratch space (`runs/`) are left out: both are rebuilt when needed.

A restore checks every hash first, refuses a home that already holds a database unless
forced, and swaps the database in last, by a rename.
"""

import hashlib
import json
import os
import shutil
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from storage.db import close_thread_connections
from storage.home import Home, write_atomic
from storage.lock import training_in_progress

MANIFEST = "manifest.json"
COUNTED = ("users", "conversations", "messages", "ratings", "corrections", "adapters")


class BackupError(Exception):
    """A backup or restore that cannot go ahead; nothing was changed."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(root: Path) -> dict[str, dict]:
    return {str(p.relative_to(root)): {"sha256": _sha256(p), "bytes": p.stat().st_size}
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}


def backup(home: Home, dest: Path) -> dict:
    """Copy `home`'s database and adapters into the new folder `dest`; returns the manifest."""
    dest = Path(dest).resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest} exists and is not an empty folder; back up into a new one")
    if not home.db_path.is_file():
        raise BackupError(f"{home.root} holds no database to back up")
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "adapters").mkdir(parents=True)
    try:
        source = sqlite3.connect(home.db_path, timeout=30)
        target = sqlite3.connect(partial / "flywheel.db")
        try:
            source.backup(target)  # every page in one step: one read transaction, one snapshot
            version = target.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
            counts = {t: target.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                      for t in COUNTED}
            registered = [r[0] for r in target.execute("SELECT id FROM adapters ORDER BY id")]
            target.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        finally:
            source.close()
            target.close()
        missing = []
        for adapter_id in registered:
            folder = home.adapters_dir / adapter_id
            if folder.is_dir():
                shutil.copytree(folder, partial / "adapters" / adapter_id)
            else:
                missing.append(adapter_id)
        manifest = {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "home": str(home.root), "schema_version": version, "rows": counts,
                    "adapters": registered, "missing_adapters": missing,
                    "files": _files(partial)}
        write_atomic(partial / MANIFEST, json.dumps(manifest, indent=1))
        if dest.exists():
            dest.rmdir()
        os.rename(partial, dest)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return manifest


def verify(source: Path) -> dict:
    """The backup's manifest, once every file it lists is there with its hash."""
    source = Path(source)
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{source} is not a Flywheel backup ({MANIFEST}: {exc})") from None
    for name, expected in manifest["files"].items():
        path = source / name
        if not path.is_file():
            raise BackupError(f"the backup is incomplete: {name} is missing")
        if _sha256(path) != expected["sha256"]:
            raise BackupError(f"the backup is damaged: {name} does not match its SHA-256")
    return manifest


def restore(home: Home, source: Path, force: bool = False) -> dict:
    """Make `home` the backup in `source`: checked first, then adapters copied in, then the
    database swapped in by a rename. Refuses a home with a database unless `force` (stop the
    server first), and never while a training run holds the lock."""
    manifest = verify(source)
    if home.db_path.exists() and not force:
        raise BackupError(f"{home.root} already holds a database; restore over it with --force "
                          "(stop its server first)")
    if training_in_progress(home):
        raise BackupError(f"a training run is going in {home.root}; wait for it to finish")
    staged = home.root / f".flywheel.db.restore-{os.getpid()}"
    shutil.copyfile(Path(source) / "flywheel.db", staged)
    try:
        db = sqlite3.connect(staged)
        try:
            if db.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                raise BackupError("the backup's database fails SQLite's integrity check")
            # Adapter rows name their folder; here it is under this home's adapters/.
            db.execute("UPDATE adapters SET path = ? || '/' || id", [str(home.adapters_dir)])
            db.commit()
            db.execute("PRAGMA journal_mode = WAL")
        finally:
            db.close()
        home.staging_dir.mkdir(parents=True, exist_ok=True)
        for adapter_id in manifest["adapters"]:
            folder = Path(source) / "adapters" / adapter_id
            if not folder.is_dir():
                continue
            tmp = home.staging_dir / f".{adapter_id}-restore"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(folder, tmp)
            shutil.rmtree(home.adapters_dir / adapter_id, ignore_errors=True)
            os.rename(tmp, home.adapters_dir / adapter_id)
        close_thread_connections()  # closing one later would delete the new database's log
        for suffix in ("-wal", "-shm"):  # the old database's log must not replay onto the new
            Path(f"{home.db_path}{suffix}").unlink(missing_ok=True)
        os.replace(staged, home.db_path)
        os.chmod(home.db_path, 0o600)
    finally:
        staged.unlink(missing_ok=True)
    return manifest
