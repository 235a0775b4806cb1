"""The contract's custom scalars."""

from __future__ import annotations

from typing import Any, NewType

import strawberry
from strawberry.types.scalar import ScalarDefinition

Version = NewType("Version", int)
BigInt = NewType("BigInt", int)

INT64 = 2**63 - 1


def _int64(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -INT64 - 1 <= value <= INT64:
        raise ValueError(f"expected a 64-bit integer, got {value!r}")
    return value


def _version(value: Any) -> int:
    number = _int64(value)
    if number < 0:
        raise ValueError(f"a version is never negative, got {number}")
    return number


SCALARS: dict[object, ScalarDefinition] = {
    Version: strawberry.scalar(
        name="Version",
        description="A global outbox position: a 64-bit integer, serialised as a JSON number.",
        serialize=int,
        parse_value=_version,
    ),
    BigInt: strawberry.scalar(
        name="BigInt",
        description="A 64-bit integer (money totals in cents), serialised as a JSON number.",
        serialize=int,
        parse_value=_int64,
    ),
}
