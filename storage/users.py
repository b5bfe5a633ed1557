"""Users and their API keys.

An API key is 32 random bytes shown once; the database keeps only its SHA-256. A key is
high-entropy, so a fast hash is the right tool (as for session tokens); slow password hashing
is for the passwords people choose. Auth is on as soon as the database holds a user.
"""

import hashlib
import secrets

import sqlite_utils

from storage.db import transaction

ROLES = ("user", "curator", "admin")
KEY_PREFIX = "fw-"


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_user(db: sqlite_utils.Database, name: str) -> dict | None:
    rows = list(db["users"].rows_where("name = ?", [name]))
    return rows[0] if rows else None


def add_user(db: sqlite_utils.Database, name: str, role: str = "user") -> dict:
    """Create a user (no password yet; the page's sign-in sets one)."""
    name = name.strip()
    if not name:
        raise ValueError("a user name cannot be empty")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if get_user(db, name) is not None:
        raise ValueError(f"user {name!r} already exists")
    db["users"].insert({"name": name, "role": role})
    return get_user(db, name)


def auth_enabled(db: sqlite_utils.Database) -> bool:
    """No users: a single local owner, no sign-in. One user or more: every call needs one."""
    return db.execute("SELECT EXISTS (SELECT 1 FROM users)").fetchone()[0] == 1


def create_key(db: sqlite_utils.Database, user_name: str, role: str = "user") -> tuple[str, dict]:
    """A new key for `user_name` (created with `role` if missing). Returns (key, user); the
    key itself is never stored, so this is the only time it can be shown."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with transaction(db):
        user = get_user(db, user_name) or add_user(db, user_name, role)
        if user["disabled"]:
            raise ValueError(f"user {user_name!r} is disabled")
        db["api_keys"].insert({"user_id": user["id"], "key_hash": _key_hash(key)})
    return key, user


def user_for_key(db: sqlite_utils.Database, key: str) -> dict | None:
    """The enabled user owning a live key, or None for a wrong, revoked or disabled one."""
    rows = db.execute_returning_dicts(
        """SELECT users.* FROM api_keys JOIN users ON users.id = api_keys.user_id
           WHERE api_keys.key_hash = ? AND api_keys.revoked_at IS NULL AND users.disabled = 0""",
        [_key_hash(key)])
    return rows[0] if rows else None


def list_keys(db: sqlite_utils.Database) -> list[dict]:
    return db.execute_returning_dicts(
        """SELECT api_keys.id, users.name AS user, users.role, api_keys.created_at,
                  api_keys.revoked_at FROM api_keys JOIN users ON users.id = api_keys.user_id
           ORDER BY api_keys.id""")


def revoke_key(db: sqlite_utils.Database, key_id: int) -> None:
    cursor = db.execute("UPDATE api_keys SET revoked_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') "
                        "WHERE id = ? AND revoked_at IS NULL", [key_id])
    if cursor.rowcount == 0:
        raise KeyError(f"no live API key with id {key_id}")
