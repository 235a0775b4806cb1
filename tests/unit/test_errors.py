"""Refusals stored with an idempotency key come back as the same refusals."""

from __future__ import annotations

import json

import pytest

from domain.errors import (
    DomainError,
    Duplicate,
    InsufficientStock,
    InvalidState,
    Rejected,
    ValidationFailed,
)
from schema.context import parse_min_version_header


@pytest.mark.parametrize(
    "error",
    [
        InsufficientStock("only 1 of MUG available", "lines.0.quantity"),
        InvalidState("order o1 is SHIPPED and cannot be cancelled"),
        Rejected([Duplicate("taken", "sku"), ValidationFailed("name must not be empty", "name")]),
    ],
)
def test_a_refusal_survives_a_round_trip_through_json(error: DomainError) -> None:
    again = DomainError.from_data(json.loads(json.dumps(error.to_data())))
    assert type(again) is type(error)
    assert (again.code, str(again)) == (error.code, str(error))
    assert [(p.code, p.message, p.field) for p in again.problems] == [
        (p.code, p.message, p.field) for p in error.problems
    ]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, (None, None)),
        ("  ", (None, None)),
        ("0", (0, None)),
        (" 42 ", (42, None)),
        (str(2**63 - 1), (2**63 - 1, None)),
        ("0" * 5000 + "7", (7, None)),
    ],
)
def test_a_min_version_header_of_ascii_digits_is_read(
    header: str | None, expected: tuple[int | None, str | None]
) -> None:
    assert parse_min_version_header(header) == expected


@pytest.mark.parametrize(
    "header", ["1_000", "+5", "\uff11\uff12", "\u0661\u0662", str(2**63), "5 5", "-1", "9" * 5000]
)
def test_a_min_version_header_int_would_take_is_refused(header: str) -> None:
    version, reason = parse_min_version_header(header)
    assert version is None
    assert reason is not None
    assert "X-Min-Version" in reason
