"""Keyset pagination: a page of rows and the cursor for the next one.

A list that grows (answers to review, conversations, users, adapters, events, runs) is read a
page at a time, "the next 200 after this row", by the sort key of the last row shown. Unlike
OFFSET, which reads and throws away every row before the page, a keyset page costs the same
at row 200 and at row 900,000, and rows written meanwhile never shift a page.

The cursor is the last row's sort key, JSON in URL-safe base64: opaque to the page and the
API, which hand it back as they got it.
"""

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

DEFAULT_PAGE = 200


@dataclass
class Page:
    rows: list[dict] = field(default_factory=list)
    next: str | None = None  # the cursor for the following page; None when this is the last


def encode(key: list[Any]) -> str:
    """The cursor for sort key `key`: its JSON in URL-safe base64 (what `decode` reads)."""
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()


def decode(cursor: str | None, size: int) -> list[Any] | None:
    """The sort key in a cursor (None: the first page); ValueError for one we did not make."""
    if not cursor:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except ValueError:
        raise ValueError("not a page cursor from this list") from None
    if not isinstance(key, list) or len(key) != size:
        raise ValueError("not a page cursor from this list")
    return key


def page_of(rows: list[dict], limit: int, key: Callable[[dict], list[Any]]) -> Page:
    """`rows` fetched with LIMIT limit + 1: the first `limit`, and a cursor if there were more."""
    if len(rows) > limit:
        rows = rows[:limit]
        return Page(rows, encode(key(rows[-1])))
    return Page(rows, None)


def every(fetch: Callable[[str | None], Page]) -> Iterator[dict]:
    """Every row of a paged list, a page at a time (a command printing a whole list)."""
    cursor = None
    while True:
        page = fetch(cursor)
        yield from page.rows
        if page.next is None:
            return
        cursor = page.next
