"""Checks on the keys a read names (ids, SKUs, search text, event types), before any
store or cache sees them.

Each read model is keyed by ids this server made (UUIDs) or by SKUs it normalised, so a
key of another shape can never name a document: the field answers as for a missing
one (``null``, a subscription's ``NOT_FOUND``) without a read, and no cache keeps a
miss for it. A key that is no key at all (too long, or text that no store can hold)
is the client's mistake: ``BAD_USER_INPUT`` naming the argument. Either way an
anonymous caller cannot make the server read, or remember, what it made up.
"""

from __future__ import annotations

import re

from domain.products import SKU, normalise_sku
from domain.validation import MAX_ID_LENGTH, text_problem
from schema.context import bad_input

__all__ = ["MAX_ID_LENGTH", "document_id", "sku", "text"]

# A SKU is at most 64 characters once trimmed; room for the spaces a form may leave.
MAX_SKU_ARGUMENT_LENGTH = 256
MAX_SEARCH_LENGTH = 100
MAX_CATEGORY_LENGTH = 100
MAX_EVENT_TYPES = 50

_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def text(value: str, argument: str, maximum: int) -> str:
    """``value`` if it is at most ``maximum`` characters of text a store can hold."""
    if len(value) > maximum:
        raise bad_input(f"{argument} has at most {maximum} characters", argument=argument)
    if text_problem(value, argument) is not None:
        raise bad_input(
            f"{argument} must be valid text: no NUL characters or unpaired surrogates",
            argument=argument,
        )
    return value


def document_id(value: str, argument: str = "id") -> str | None:
    """The id if a document can have it; None if none can (the caller answers as for a
    missing document, without reading)."""
    text(value, argument, MAX_ID_LENGTH)
    return value if _ID.fullmatch(value) else None


def sku(value: str, argument: str = "sku") -> str | None:
    """The normalised SKU if a product can have it; None if none can."""
    text(value, argument, MAX_SKU_ARGUMENT_LENGTH)
    normalised = normalise_sku(value)
    return normalised if SKU.fullmatch(normalised) else None
