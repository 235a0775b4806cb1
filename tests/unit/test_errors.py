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
