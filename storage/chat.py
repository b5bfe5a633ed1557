"""Conversations, messages, ratings and corrections: where every chat turn is stored.

Messages form a tree per conversation: `parent_id` points at the turn answered or followed,
so a regenerated answer is a sibling of the one it replaces and nothing is overwritten.
"""

import json
import uuid
from typing import Any

import sqlite_utils

from storage import paging
from storage.db import inserted_id, present, transaction
from storage.paging import Page

RATINGS = ("up", "down")


def new_id(prefix: str) -> str:
    """A new random id: `prefix`, a dash and 24 hex digits."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def create_conversation(db: sqlite_utils.Database, user_id: int | None = None,
                        system_prompt: str | None = None, title: str | None = None) -> str:
    """Start a new conversation and return its id."""
    conversation_id = new_id("conv")
    db.table("conversations").insert({"id": conversation_id, "user_id": user_id,
                                      "system_prompt": system_prompt, "title": title})
    return conversation_id


def get_conversation(db: sqlite_utils.Database, conversation_id: str) -> dict | None:
    """The conversation with this id, or None if there is none or it was deleted."""
    rows = list(db["conversations"].rows_where("id = ? AND deleted_at IS NULL", [conversation_id]))
    return rows[0] if rows else None


def list_conversations(db: sqlite_utils.Database, user_id: int | None,
                       limit: int = paging.DEFAULT_PAGE, after: str | None = None,
                       search: str = "") -> Page:
    """A page of a user's conversations (None: the local owner's), the most recently active
    first (`updated_at`, the time of its newest message). `after`: the previous page's
    `next`. `search`: only conversations whose title holds all these words (any case, in
    any order, % and _ literal), or with a message that holds them all (as whole words, the
    last one also as a beginning; any case and accents; through the `messages_fts` index)."""
    key = paging.decode(after, 2)
    words = search.split()
    found, query = "", []
    if words:
        titled = " AND ".join("title LIKE ? ESCAPE '\\'" for _ in words)
        # The index answers for this owner's messages only (migration 10), so the subquery
        # runs once and yields a few rows however common the words are.
        found = f""" AND (({titled}) OR id IN (
            SELECT conversation_id FROM messages WHERE rowid IN (
                SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?)))"""
        # Each word quoted, so FTS5's query syntax in what people type is only text. Whole
        # words, but the last may be a beginning (it is still being typed): a beginning makes
        # FTS5 merge the lists of every word it starts, 22 ms for a word in half of a
        # million messages, against 1 ms for a whole word (bench/storage.py at 1M answers).
        quoted = ['content:"' + w.replace('"', '""') + '"' for w in words]
        query = [f'owner:"u{"none" if user_id is None else int(user_id)}" AND '
                 + " AND ".join(quoted) + "*"]
    patterns = ["%" + w.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
                for w in words]
    rows = db.execute_returning_dicts(
        f"""SELECT * FROM conversations WHERE user_id IS ? AND deleted_at IS NULL{found}
            {"AND (updated_at, id) < (?, ?)" if key else ""}
            ORDER BY updated_at DESC, id DESC LIMIT ?""",
        [user_id, *patterns, *query, *(key or []), limit + 1])
    return paging.page_of(rows, limit, lambda r: [r["updated_at"], r["id"]])


def update_conversation(db: sqlite_utils.Database, conversation_id: str, *,
                        title: str | None = None, system_prompt: str | None = None) -> None:
    """Rename a conversation or change the system prompt used for its next turns."""
    changes: dict[str, str | None] = {}
    if title is not None:
        if not title.strip():
            raise ValueError("a title cannot be empty")
        changes["title"] = title.strip()[:120]
    if system_prompt is not None:
        changes["system_prompt"] = system_prompt.strip() or None
    if changes:
        db.table("conversations").update(conversation_id, changes)


def delete_conversation(db: sqlite_utils.Database, conversation_id: str) -> None:
    """Delete a conversation: from now on it is gone from its owner's list, the review queue,
    side-by-side history and every training set and export. The rows stay until the nightly
    `flywheel prune` erases them (so Undo works until then); see storage/retention.py."""
    db.execute("UPDATE conversations SET deleted_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') "
               "WHERE id = ? AND deleted_at IS NULL", [conversation_id])


def restore_conversation(db: sqlite_utils.Database, conversation_id: str,
                         user_id: int | None) -> bool:
    """Undo a delete of one of `user_id`'s conversations (until it is pruned)."""
    return db.execute("UPDATE conversations SET deleted_at = NULL "
                      "WHERE id = ? AND user_id IS ? AND deleted_at IS NOT NULL",
                      [conversation_id, user_id]).rowcount == 1


def answer_details(db: sqlite_utils.Database, message_ids: list[str]) -> list[dict]:
    """Each answer among these messages, in their order: its `id`, the `version` that wrote
    it (an adapter id, or "the base model"), and its place among the answers to the same
    question (`at` of `of`, in the order of `siblings`). Questions are left out."""
    if not message_ids:
        return []
    marks = ", ".join("?" * len(message_ids))
    rows = db.execute(
        f"""SELECT m.id, COALESCE(m.adapter_id, 'the base model'),
                   (SELECT COUNT(*) FROM messages s WHERE s.parent_id IS m.parent_id
                      AND s.conversation_id = m.conversation_id AND s.role = m.role
                      AND (s.created_at, s.rowid) <= (m.created_at, m.rowid)),
                   (SELECT COUNT(*) FROM messages s WHERE s.parent_id IS m.parent_id
                      AND s.conversation_id = m.conversation_id AND s.role = m.role)
            FROM messages m WHERE m.id IN ({marks}) AND m.role = 'assistant'""",
        message_ids).fetchall()
    found = {r[0]: {"id": r[0], "version": r[1], "at": r[2], "of": r[3]} for r in rows}
    return [found[i] for i in message_ids if i in found]


def own_ratings(db: sqlite_utils.Database, message_ids: list[str],
                rater_id: int | None) -> dict[str, str]:
    """The latest thumbs `rater_id` gave each of these messages: {message id: 'up'/'down'}."""
    if not message_ids:
        return {}
    marks = ", ".join("?" * len(message_ids))
    rows = db.execute(
        f"""SELECT message_id, rating FROM ratings r
            WHERE message_id IN ({marks}) AND rater_id IS ? AND rating IS NOT NULL
              AND id = (SELECT MAX(id) FROM ratings WHERE message_id = r.message_id
                        AND rater_id IS r.rater_id AND rating IS NOT NULL)""",
        [*message_ids, rater_id])
    return dict(rows.fetchall())


def siblings(db: sqlite_utils.Database, message_id: str) -> list[str]:
    """Ids of the message and its siblings (same parent: regenerations, edits), oldest first."""
    message = get_message(db, message_id)
    if message is None:
        raise KeyError(f"no message with id {message_id}")
    return [r["id"] for r in db.query(
        "SELECT id FROM messages WHERE conversation_id = ? AND parent_id IS ? AND role = ? "
        "ORDER BY created_at, rowid", [message["conversation_id"], message["parent_id"],
                                       message["role"]])]


def latest_leaf(db: sqlite_utils.Database, message_id: str) -> str:
    """Follow the newest child down from `message_id` to the end of that branch."""
    while True:
        child = db.execute("SELECT id FROM messages WHERE parent_id = ? "
                           "ORDER BY created_at DESC, rowid DESC LIMIT 1", [message_id]).fetchone()
        if child is None:
            return message_id
        message_id = child[0]


def last_message(db: sqlite_utils.Database, conversation_id: str) -> str | None:
    """The id of the conversation's newest message, or None if it has none."""
    row = db.execute("SELECT id FROM messages WHERE conversation_id = ? "
                     "ORDER BY created_at DESC, rowid DESC LIMIT 1", [conversation_id]).fetchone()
    return row[0] if row else None


def add_message(db: sqlite_utils.Database, conversation_id: str, role: str, content: str,
                parent_id: str | None = None, *, model: str | None = None,
                adapter_id: str | None = None, params: dict | None = None,
                prompt_tokens: int | None = None, completion_tokens: int | None = None,
                latency_ms: float | None = None, finish_reason: str | None = None,
                message_id: str | None = None) -> str:
    """Store one turn and return its id (for an answer, also the API's completion id).
    `message_id` lets a caller name an answer before it exists (the API streams its id)."""
    message_id = message_id or new_id("msg" if role != "assistant" else "chatcmpl")
    db.table("messages").insert({
        "id": message_id, "conversation_id": conversation_id, "parent_id": parent_id,
        "role": role, "content": content, "model": model, "adapter_id": adapter_id,
        "params": json.dumps(params) if params is not None else None,
        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "latency_ms": latency_ms, "finish_reason": finish_reason,
    })
    return message_id


def store_transcript(db: sqlite_utils.Database, messages: list[dict[str, str]],
                     user_id: int | None = None) -> tuple[str, str]:
    """Store a whole chat sent in one go (an API request) as a new conversation: leading
    system turns become its system prompt, the rest a chain of messages. All or nothing.
    Returns (conversation id, id of the last stored turn)."""
    leading = 0
    while leading < len(messages) and messages[leading]["role"] == "system":
        leading += 1
    system_prompt = "\n\n".join(m["content"] for m in messages[:leading]) or None
    turns = messages[leading:]
    first_user = next((m["content"] for m in turns if m["role"] == "user"), "")
    with transaction(db):
        conversation_id = create_conversation(db, user_id=user_id, system_prompt=system_prompt,
                                              title=first_user[:60] or None)
        parent_id = None
        for turn in turns:
            parent_id = add_message(db, conversation_id, turn["role"], turn["content"], parent_id)
    return conversation_id, present(parent_id, "turn after the system prompt")


def get_message(db: sqlite_utils.Database, message_id: str) -> dict | None:
    """The message with this id (any owner's), or None if there is none."""
    rows = list(db["messages"].rows_where("id = ?", [message_id]))
    return rows[0] if rows else None


def message_for(db: sqlite_utils.Database, message_id: str | None, user_id: int | None,
                any_owner: bool = False) -> dict | None:
    """The message, if it is in a conversation of `user_id` (None: the local owner), or in
    anyone's with `any_owner` (curators and admins), and that conversation is not deleted;
    None otherwise, so that another user's message reads as missing rather than forbidden."""
    if not message_id:
        return None
    rows = db.execute_returning_dicts(
        """SELECT m.* FROM messages m JOIN conversations c ON c.id = m.conversation_id
           WHERE m.id = :id AND (:any OR c.user_id IS :user) AND c.deleted_at IS NULL""",
        {"id": message_id, "any": int(any_owner), "user": user_id})
    return rows[0] if rows else None


def thread(db: sqlite_utils.Database, message_id: str) -> list[dict]:
    """The path from the conversation's first turn down to `message_id`, oldest first."""
    rows = db.execute_returning_dicts(
        """
        WITH RECURSIVE path(id, parent_id, depth) AS (
            SELECT id, parent_id, 0 FROM messages WHERE id = ?
            UNION ALL
            SELECT m.id, m.parent_id, path.depth + 1
            FROM messages m JOIN path ON m.id = path.parent_id
        )
        SELECT messages.* FROM path JOIN messages USING (id) ORDER BY path.depth DESC
        """, [message_id])
    return rows


def history(db: sqlite_utils.Database, message_id: str) -> list[dict[str, str]]:
    """The chat up to and including `message_id`, with the conversation's system prompt
    first, as `{"role", "content"}` dicts ready for a chat template. For an answer,
    `history(db, answer["parent_id"])` is exactly what the model saw before answering."""
    path = thread(db, message_id)
    if not path:
        raise KeyError(f"no message with id {message_id}")
    system_prompt = db.execute("SELECT system_prompt FROM conversations WHERE id = ?",
                               [path[0]["conversation_id"]]).fetchone()[0]
    turns = [{"role": m["role"], "content": m["content"]} for m in path]
    if system_prompt:
        turns.insert(0, {"role": "system", "content": system_prompt})
    return turns


def rate(db: sqlite_utils.Database, message_id: str, rating: str | None = None, *,
         rater_id: int | None = None, score: int | None = None,
         reasons: list[str] | None = None, comment: str | None = None) -> int:
    """Record a rating of an answer. Ratings are never updated in place: a changed mind is a
    new row, and the latest one counts (a curator's over a user's); a trigger updates the
    answer's `judgements` row in the same statement."""
    if rating is not None and rating not in RATINGS:
        raise ValueError(f"rating must be one of {RATINGS}, not {rating!r}")
    if score is not None and not 1 <= score <= 5:
        raise ValueError(f"score must be 1 to 5, not {score}")
    _require_answer(db, message_id)
    # Plain INSERTs on the feedback path: sqlite-utils' insert() first reads the schema,
    # which costs more than the insert itself at a thousand writes a second.
    return inserted_id(db.execute(
        "INSERT INTO ratings (message_id, rater_id, rating, score, reasons, comment) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [message_id, rater_id, rating, score, json.dumps(reasons or []), comment]))


def _require_answer(db: sqlite_utils.Database, message_id: str) -> None:
    row = db.execute("SELECT role FROM messages WHERE id = ?", [message_id]).fetchone()
    if row is None or row[0] != "assistant":
        raise KeyError(f"no answer with id {message_id}")


def add_correction(db: sqlite_utils.Database, message_id: str, content: str,
                   author_id: int | None = None) -> int:
    """Keep a better answer beside the original one; the original is never changed."""
    if not content.strip():
        raise ValueError("a correction cannot be empty")
    _require_answer(db, message_id)
    return inserted_id(db.execute(
        "INSERT INTO corrections (message_id, author_id, content) VALUES (?, ?, ?)",
        [message_id, author_id, content]))


def record_feedback(db: sqlite_utils.Database, message_id: str, rating: str | None = None, *,
                    rater_id: int | None = None, reasons: list[str] | None = None,
                    comment: str | None = None, correction: str | None = None,
                    score: int | None = None) -> dict[str, int | None]:
    """One piece of feedback on an answer, as the page and `POST /v1/feedback` both send it:
    a rating (with reasons and comment) and/or a correction, stored together or not at all."""
    if rating is None and score is None and correction is None and not comment:
        raise ValueError("feedback needs a rating, a score, a comment or a correction")
    with transaction(db):
        rating_id = None
        if rating is not None or score is not None or comment:
            rating_id = rate(db, message_id, rating, rater_id=rater_id, score=score,
                             reasons=reasons, comment=comment)
        correction_id = (add_correction(db, message_id, correction, author_id=rater_id)
                         if correction is not None else None)
    return {"rating_id": rating_id, "correction_id": correction_id}


FLAGS = ("pii", "unsafe", "no_consent")


def set_flags(db: sqlite_utils.Database, message_id: str, kinds: list[str],
              author_id: int | None = None) -> None:
    """Make an answer's flags exactly `kinds` (flags keep it out of training)."""
    unknown = set(kinds) - set(FLAGS)
    if unknown:
        raise ValueError(f"unknown flags {sorted(unknown)}; use {FLAGS}")
    with transaction(db):
        db.execute("DELETE FROM flags WHERE message_id = ?", [message_id])
        for kind in kinds:
            db.table("flags").insert({"message_id": message_id, "kind": kind,
                                      "author_id": author_id})


def flags(db: sqlite_utils.Database, message_id: str) -> list[str]:
    """The kinds of flag set on a message (empty when it has none)."""
    return [r["kind"] for r in db["flags"].rows_where("message_id = ?", [message_id])]


def latest_ratings(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """One row per answer with a rating that counts: the answer and that rating (a
    curator's over a user's, the latest among equals). For small reports and tests: a page
    or a stream (storage/review.py, storage/feedback.py) is what scales."""
    return db.execute_returning_dicts(
        """SELECT m.*, j.rating, j.rated_at FROM judgements j JOIN messages m ON m.id = j.message_id
           WHERE j.rating IS NOT NULL ORDER BY j.created_at, j.message_id""")


def corrections(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Every corrected answer with its latest correction. For small reports and tests."""
    return db.execute_returning_dicts(
        """SELECT c.id AS correction_id, c.content AS correction, m.* FROM judgements j
           JOIN corrections c ON c.id = j.correction_id JOIN messages m ON m.id = j.message_id
           ORDER BY j.created_at, j.message_id""")


def feedback_counts(db: sqlite_utils.Database) -> dict[str, int]:
    """How much feedback there is: answers whose rating that counts is up or down, and
    corrected answers."""
    up, down = db.execute("SELECT COALESCE(SUM(up), 0), COALESCE(SUM(down), 0) "
                          "FROM thumbs_daily").fetchone()
    corrected = db.execute("SELECT COUNT(*) FROM judgements "
                           "WHERE correction_id IS NOT NULL").fetchone()[0]
    return {"up": up, "down": down, "corrections": corrected}


def feedback_since(db: sqlite_utils.Database, since: str | None) -> int:
    """Ratings, corrections and side-by-side picks given after `since` (an ISO timestamp;
    None: ever): the scheduler's 'is there enough new feedback tonight?'."""
    since = since or ""
    return sum(db.execute(f"SELECT COUNT(*) FROM {table} WHERE created_at > ?",
                          [since]).fetchone()[0]
               for table in ("ratings", "corrections", "comparisons"))


__all__ = ["create_conversation", "get_conversation", "list_conversations",
           "update_conversation", "delete_conversation", "siblings", "latest_leaf",
           "last_message", "set_flags", "flags", "FLAGS",
           "add_message", "store_transcript",
           "get_message", "message_for", "thread",
           "history", "rate", "add_correction", "record_feedback", "latest_ratings", "corrections",
           "feedback_counts", "feedback_since", "transaction"]
