"""Answers still being generated: a row per answer, its text rewritten as it streams (a
journal), so that a server killed mid-answer loses nothing it had shown. A finished answer
moves into `messages` and leaves this table in one transaction; at the next start, whatever
is left is stored as `interrupted`, like an answer stopped by its reader."""

import json

import sqlite_utils

from storage.db import transaction


def start(db: sqlite_utils.Database, answer_id: str, conversation_id: str, parent_id: str, *,
          model: str, params: dict, prompt_tokens: int) -> None:
    """Note an answer that is about to be generated (empty so far)."""
    db.execute("INSERT INTO partial_answers (id, conversation_id, parent_id, model, params, "
               "prompt_tokens) VALUES (?, ?, ?, ?, ?, ?)",
               [answer_id, conversation_id, parent_id, model, json.dumps(params), prompt_tokens])


def write_many(db: sqlite_utils.Database, texts: list[tuple[str, str, str | None]]) -> None:
    """Rewrite the text (and adapter, once known) of running answers, in one transaction:
    `texts` holds (answer id, text so far, adapter id)."""
    with transaction(db):
        db.conn.executemany(
            "UPDATE partial_answers SET content = ?, adapter_id = ?, "
            "updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?",
            [(text, adapter, answer_id) for answer_id, text, adapter in texts])


def finish(db: sqlite_utils.Database, answer_id: str) -> None:
    """The answer is stored in `messages` (call inside the same transaction)."""
    db.execute("DELETE FROM partial_answers WHERE id = ?", [answer_id])


def recover(db: sqlite_utils.Database, answer_id: str | None = None) -> int:
    """Store unfinished answers (all, or one) as `interrupted` messages with the text they
    had; returns how many. Run at start-up, before anything is generated."""
    where, args = ("WHERE id = ?", [answer_id]) if answer_id else ("", [])
    with transaction(db):
        rows = db.execute_returning_dicts(f"SELECT * FROM partial_answers {where}", args)
        for row in rows:
            db.execute(
                "INSERT OR IGNORE INTO messages (id, conversation_id, parent_id, role, content, "
                "model, adapter_id, params, prompt_tokens, completion_tokens, finish_reason) "
                "VALUES (?, ?, ?, 'assistant', ?, ?, ?, ?, ?, NULL, 'interrupted')",
                [row["id"], row["conversation_id"], row["parent_id"], row["content"].rstrip(),
                 row["model"], row["adapter_id"], row["params"], row["prompt_tokens"]])
            finish(db, row["id"])
    return len(rows)
