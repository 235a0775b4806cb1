"""Opaque cursors for keyset pagination: the sort values of the last item handed out."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any


class InvalidCursor(ValueError):
    """An ``after`` cursor this server did not hand out for that list."""


@dataclass(frozen=True, slots=True)
class Page:
    documents: list[dict[str, Any]]
    cursors: list[str]
    has_next_page: bool
    total_count: int | None = None


def encode(kind: str, *values: Any) -> str:
    raw = json.dumps([kind, *values], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode(kind: str, cursor: str, arity: int) -> list[Any]:
    """The values in ``cursor``, checked to belong to the list ``kind``."""
    try:
        decoded = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, TypeError, binascii.Error) as error:
        raise InvalidCursor(f"malformed cursor {cursor!r}") from error
    if not isinstance(decoded, list) or len(decoded) != arity + 1 or decoded[0] != kind:
        raise InvalidCursor("the cursor belongs to another list or order")
    return decoded[1:]


def page_of(
    documents: list[dict[str, Any]], first: int, cursor_of: Any, total: int | None = None
) -> Page:
    """Cuts ``first`` documents out of ``first + 1`` fetched, to know whether more follow."""
    shown = documents[:first]
    return Page(
        documents=shown,
        cursors=[cursor_of(d) for d in shown],
        has_next_page=len(documents) > first,
        total_count=total,
    )
