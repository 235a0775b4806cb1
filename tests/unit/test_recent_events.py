"""The in-process buffer of the newest audit documents, for the events subscription."""

from __future__ import annotations

from datetime import UTC, datetime

from projections.recent import RecentEvents

AT = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)


def event(position: int, kind: str = "ProductCreated") -> dict[str, object]:
    return {"_id": position, "type": kind, "occurredAt": AT}


def test_a_range_it_holds_whole_is_answered_like_the_collection() -> None:
    recent = RecentEvents()
    recent.add(event(p, "A" if p % 2 else "B") for p in range(5, 11))
    assert [d["_id"] for d in recent.between(6, 9, None, 100) or []] == [7, 8, 9]
    assert [d["_id"] for d in recent.between(4, 10, ["B"], 100) or []] == [6, 8, 10]
    assert [d["_id"] for d in recent.between(4, 10, None, 2) or []] == [5, 6]
    [first] = recent.between(4, 5, None, 10) or []
    assert first["occurredAt"] == AT.replace(microsecond=123000)  # as Mongo keeps it


def test_a_range_reaching_outside_it_is_left_to_the_collection() -> None:
    recent = RecentEvents()
    recent.add(event(p) for p in range(5, 11))
    assert recent.between(3, 8, None, 100) is None  # position 4 is not here
    assert recent.between(8, 12, None, 100) is None  # 11 and 12 are not yet


def test_a_gap_starts_it_afresh_and_a_replay_changes_nothing() -> None:
    recent = RecentEvents(size=4)
    recent.add(event(p) for p in range(1, 4))
    recent.add(event(p) for p in range(2, 4))
    assert [d["_id"] for d in recent.between(0, 3, None, 10) or []] == [1, 2, 3]
    recent.add([event(7), event(8)])
    assert recent.between(2, 8, None, 10) is None
    assert [d["_id"] for d in recent.between(6, 8, None, 10) or []] == [7, 8]
    recent.add(event(p) for p in range(9, 12))
    assert recent.between(6, 11, None, 10) is None  # 7 fell out of the four kept
