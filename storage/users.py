"""Users, their passwords, browser sessions and API keys.

Passwords are hashed with Argon2id (argon2-cffi). A browser session is a random token in a
cookie; the database keeps its SHA-256 and an expiry, so sessions time out and survive a
server restart.

An API key is 32 random bytes shown once; the database keeps only its SHA-256. A key is
high-entropy, so a fast hash is the right tool (as for session tokens); slow password hashing
is for the passwords people choose. Auth is on as soon as the database holds a user.
"""

import hashlib
import secrets

import sqlite_utils
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from storage import paging
from storage.db import present, transaction, utc_now
from storage.paging import Page

ROLES = ("user", "curator", "admin")
NEW_ROLE = "user"  # the role a new account or key holder gets when not told one
RANK = {role: i for i, role in enumerate(ROLES)}  # a curator may do what a user may, etc.
_hasher = PasswordHasher()
MIN_PASSWORD = 8
KEY_PREFIX = "fw-"


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_user(db: sqlite_utils.Database, name: str) -> dict | None:
    """The user with this name (password hash included), or None if there is none."""
    rows = list(db["users"].rows_where("name = ?", [name]))
    return rows[0] if rows else None


def add_user(db: sqlite_utils.Database, name: str, role: str = NEW_ROLE,
             password: str | None = None) -> dict:
    """Create a user, with a password to sign in with (None: only API keys, until one is
    set). All checked before anything is written."""
    name = name.strip()
    if not name:
        raise ValueError("a user name cannot be empty")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if get_user(db, name) is not None:
        raise ValueError(f"user {name!r} already exists")
    if password is not None:
        _check_password_rules(password)
    db.table("users").insert({"name": name, "role": role,
                              "password_hash": _hasher.hash(password) if password else None})
    return present(get_user(db, name), f"user {name}")


def _check_password_rules(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"a password needs at least {MIN_PASSWORD} characters")


def auth_enabled(db: sqlite_utils.Database) -> bool:
    """No users: a single local owner, no sign-in. One user or more: every call needs one."""
    return db.execute("SELECT EXISTS (SELECT 1 FROM users)").fetchone()[0] == 1


def create_key(db: sqlite_utils.Database, user_name: str,
               role: str = NEW_ROLE) -> tuple[str, dict]:
    """A new key for `user_name` (created with `role` if missing). Returns (key, user); the
    key itself is never stored, so this is the only time it can be shown."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with transaction(db):
        user = get_user(db, user_name) or add_user(db, user_name, role)
        if user["disabled"]:
            raise ValueError(f"user {user_name!r} is disabled")
        db.table("api_keys").insert({"user_id": user["id"], "key_hash": _key_hash(key)})
    return key, user


def user_for_key(db: sqlite_utils.Database, key: str) -> dict | None:
    """The enabled user owning a live key, or None for a wrong, revoked or disabled one."""
    rows = db.execute_returning_dicts(
        """SELECT users.* FROM api_keys JOIN users ON users.id = api_keys.user_id
           WHERE api_keys.key_hash = ? AND api_keys.revoked_at IS NULL AND users.disabled = 0""",
        [_key_hash(key)])
    return rows[0] if rows else None


def list_keys(db: sqlite_utils.Database) -> list[dict]:
    """Every API key, live or revoked, with its user's name and role (no hashes)."""
    return db.execute_returning_dicts(
        """SELECT api_keys.id, users.name AS user, users.role, api_keys.created_at,
                  api_keys.revoked_at FROM api_keys JOIN users ON users.id = api_keys.user_id
           ORDER BY api_keys.id""")


def revoke_key(db: sqlite_utils.Database, key_id: int) -> None:
    """Revoke the live API key with this id; KeyError if there is none."""
    cursor = db.execute("UPDATE api_keys SET revoked_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') "
                        "WHERE id = ? AND revoked_at IS NULL", [key_id])
    if cursor.rowcount == 0:
        raise KeyError(f"no live API key with id {key_id}")


def list_users(db: sqlite_utils.Database, limit: int = paging.DEFAULT_PAGE,
               after: str | None = None) -> Page:
    """A page of users in the order they were added (never their password hashes)."""
    key = paging.decode(after, 1)
    rows = db.execute_returning_dicts(
        "SELECT id, name, role, disabled, consent, created_at, "
        "password_hash IS NOT NULL AS has_password FROM users WHERE id > ? ORDER BY id LIMIT ?",
        [key[0] if key else 0, limit + 1])
    return paging.page_of(rows, limit, lambda r: [r["id"]])


def has_admin(db: sqlite_utils.Database) -> bool:
    """An enabled admin who can sign in (has a password)."""
    return db.execute("SELECT EXISTS (SELECT 1 FROM users WHERE role = 'admin' AND disabled = 0 "
                      "AND password_hash IS NOT NULL)").fetchone()[0] == 1


def set_password(db: sqlite_utils.Database, name: str, password: str) -> None:
    """Set a user's password, ending their sessions and API keys; KeyError if no such user."""
    _check_password_rules(password)
    user = get_user(db, name)
    if user is None:
        raise KeyError(f"no user {name!r}")
    with transaction(db):
        db.table("users").update(user["id"], {"password_hash": _hasher.hash(password)})
        # A new password ends every way in that the old one may have opened: sessions and keys.
        db.execute("DELETE FROM sessions WHERE user_id = ?", [user["id"]])
        db.execute("UPDATE api_keys SET revoked_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') "
                   "WHERE user_id = ? AND revoked_at IS NULL", [user["id"]])


def set_disabled(db: sqlite_utils.Database, name: str, disabled: bool = True) -> None:
    """Disable (or enable) a user; disabling ends their sessions. KeyError if no such user."""
    user = get_user(db, name)
    if user is None:
        raise KeyError(f"no user {name!r}")
    with transaction(db):
        db.table("users").update(user["id"], {"disabled": int(disabled)})
        if disabled:
            db.execute("DELETE FROM sessions WHERE user_id = ?", [user["id"]])


class AccountDisabled(PermissionError):
    """The name and password are right, but an admin disabled the account."""


def check_password(db: sqlite_utils.Database, name: str, password: str) -> dict | None:
    """The enabled user with this name and password, or None (same answer for every miss).
    Raises AccountDisabled only to someone who knows the password: telling a guesser that
    an account exists and is disabled would help them."""
    user = get_user(db, name)
    if user is None or not user["password_hash"]:
        _hasher.hash(password)  # spend the same time as a real check
        return None
    try:
        _hasher.verify(user["password_hash"], password)
    except (VerificationError, InvalidHashError):
        return None
    if user["disabled"]:
        raise AccountDisabled(f"{name} is disabled; ask an admin to enable it")
    return user


def start_session(db: sqlite_utils.Database, user_id: int, hours: float) -> str:
    """Open a browser session of `hours` for a user; returns its token (only a hash is kept)."""
    token = secrets.token_urlsafe(32)
    db.table("sessions").insert({"token_hash": _key_hash(token), "user_id": user_id,
                                 "expires_at": utc_now(plus_hours=hours)})
    return token


def user_for_session(db: sqlite_utils.Database, token: str) -> dict | None:
    """The enabled user of an unexpired session token, or None."""
    rows = db.execute_returning_dicts(
        """SELECT users.* FROM sessions JOIN users ON users.id = sessions.user_id
           WHERE sessions.token_hash = ? AND sessions.expires_at > ? AND users.disabled = 0""",
        [_key_hash(token), utc_now()])
    return rows[0] if rows else None


def end_session(db: sqlite_utils.Database, token: str) -> None:
    """End the session with this token (sign out); an unknown token is ignored."""
    db.execute("DELETE FROM sessions WHERE token_hash = ?", [_key_hash(token)])
