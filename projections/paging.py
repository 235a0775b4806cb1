"""Opaque cursors for keyset pagination: the sort values of the last item handed out.

A cursor comes back from the client, so nothing in it is trusted: it decodes only to
the list it was made for and to values of the types that list sorts by (a string or
a whole number), never to an object that a query would read as an operator.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

MAX_CURSOR_LENGTH = 2048
"""Longest cursor accepted. The longest this server hands out holds a product name of
200 characters of four UTF-8 bytes each, an id and the sort's name: under 1,200."""
Scalar = type[int] | type[str]


class InvalidCursor(ValueError):
    """An ``after`` cursor this server did not hand out for that list."""


@dataclass(frozen=True, slots=True)
class Page:
    documents: list[dict[str, Any]]
    cursors: list[str]
    has_next_page: bool
    total_count: int | None = None


def encode(kind: str, *values: Any) -> str:
    raw = json.dumps([kind, *values], separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode(kind: str, cursor: str, *types: Scalar | tuple[Scalar, ...]) -> list[Any]:
    """The values in ``cursor``, checked to belong to the list ``kind`` and to be of
    ``types`` (one a value; ``int`` never admits a boolean)."""
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise InvalidCursor(f"a cursor has at most {MAX_CURSOR_LENGTH} characters")
    try:
        decoded = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
    except (ValueError, TypeError, binascii.Error, RecursionError) as error:
        raise InvalidCursor("malformed cursor") from error
    if not isinstance(decoded, list) or len(decoded) != len(types) + 1 or decoded[0] != kind:
        raise InvalidCursor("the cursor belongs to another list or order")
    values = decoded[1:]
    if not all(_is(value, kind) for value, kind in zip(values, types, strict=True)):
        raise InvalidCursor("malformed cursor")
    return values


def _is(value: Any, kinds: Scalar | tuple[Scalar, ...]) -> bool:
    return isinstance(value, kinds) and not isinstance(value, bool)


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
