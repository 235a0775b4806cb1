"""The relay's lag in seconds: the age of the oldest event a projection has not applied."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from domain.events import RecordedEvent
from projections.progress import Progress
from projections.relay import Relay


class Named:
    def __init__(self, name: str) -> None:
        self.name = name
        self.indexes: dict[str, Any] = {}


def event(position: int, age: float) -> RecordedEvent:
    """Event ``position``, ``age`` seconds old."""
    return RecordedEvent(
        position, f"e{position}", "ProductCreated", "Product", "p", position, {},
        datetime.now(UTC) - timedelta(seconds=age),
    )  # fmt: skip


def relay() -> Relay:
    made = Relay(None, None, [Named("a"), Named("b")], Progress())  # type: ignore[arg-type,list-item]
    made.positions = {"a": 0, "b": 0}
    return made


def test_a_projection_behind_is_as_old_as_its_first_unapplied_event() -> None:
    r = relay()
    r.head = 3
    r.positions = {"a": 1, "b": 3}
    r._note_lag([event(1, 60), event(2, 30), event(3, 5)])
    assert 29 < r.lag_seconds("a") < 40
    assert r.lag_seconds("b") == 0


def test_caught_up_is_no_lag_and_a_batch_that_ends_short_bounds_it() -> None:
    r = relay()
    r.head = 10
    r._note_lag([event(1, 50)])
    assert r.lag_seconds("a") > 49
    r.positions = {"a": 5, "b": 5}
    r._note_lag([])  # read nothing: what it knew stays
    assert r.lag_seconds("a") > 49
    r._note_lag([event(5, 20)])  # applied up to the batch's end: the next is no older
    assert 19 < r.lag_seconds("a") < 30
    r.positions = {"a": 10, "b": 10}
    r._note_lag([])
    assert r.lag_seconds("a") == 0
    assert r.lag_seconds("never-seen") == 0


def test_a_projection_waiting_out_a_back_off_keeps_its_age() -> None:
    """Batches read past it meanwhile (they start at the ready projections' positions):
    its oldest unapplied event is not among them."""
    log = [event(n, age=1000 - 30 * n) for n in range(1, 31)]  # event 3: 910 s old
    r = relay()
    r.head = 30
    r.positions = {"a": 2, "b": 2}
    r._note_lag(log[2:20], start=2)  # a fails on event 3 (and backs off), b applies up to 20
    r.positions = {"a": 2, "b": 20}
    assert r.lag_seconds("a") > 900
    r._note_lag(log[20:30], start=20)  # a waits out its back-off; b catches up
    r.positions = {"a": 2, "b": 30}
    r._note_lag([], start=None)
    assert r.lag_seconds("a") > 900
    assert r.lag_seconds("b") == 0
