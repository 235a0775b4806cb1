"""Cursors: what this server hands out decodes again; nothing else decodes to a query."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest

from projections import paging
from projections.paging import MAX_CURSOR_LENGTH, InvalidCursor


def test_the_longest_name_a_product_can_have_makes_a_cursor_that_decodes() -> None:
    """Non-ASCII names were escaped six or twelve bytes a character: a cursor of 66
    Cyrillic letters was refused as too long."""
    for name in ("я" * 200, "😀" * 200, "x" * 200):
        cursor = paging.encode("NAME_ASC", name, str(uuid.uuid4()))
        assert len(cursor) <= MAX_CURSOR_LENGTH
        assert paging.decode("NAME_ASC", cursor, str, str)[0] == name


def made(*values: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values)).encode()).decode()


KINDS: dict[str, tuple[type, ...]] = {"NAME_ASC": (str, str), "PRICE_ASC": (int, str)}


@pytest.mark.parametrize(
    ("kind", "cursor"),
    [
        ("NAME_ASC", made("NAME_ASC", {"$regex": "^c"}, "")),
        ("NAME_ASC", made("NAME_ASC", "a", {"$gt": ""})),
        ("NAME_ASC", made("NAME_ASC", ["a"], "")),
        ("NAME_ASC", made("NAME_ASC", None, "")),
        ("NAME_ASC", made("NAME_ASC", 5, "")),
        ("PRICE_ASC", made("PRICE_ASC", True, "id")),
        ("PRICE_ASC", made("PRICE_ASC", 1.5, "id")),
        ("PRICE_ASC", made("PRICE_ASC", 1, "id", "extra")),
        ("PRICE_ASC", made("NEWEST", 1, "id")),
        ("PRICE_ASC", "x" * (MAX_CURSOR_LENGTH + 1)),
        ("PRICE_ASC", "not base64 ☕"),
        ("NAME_ASC", base64.urlsafe_b64encode(b"[" * 1000 + b"]" * 1000).decode()),
    ],
)
def test_a_cursor_of_other_values_or_another_list_is_refused(kind: str, cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        paging.decode(kind, cursor, *KINDS[kind])


def test_a_cursor_of_the_list_and_its_types_decodes() -> None:
    assert paging.decode("PRICE_ASC", made("PRICE_ASC", 1, "id"), int, str) == [1, "id"]
