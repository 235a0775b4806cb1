"""A COMMIT that reports an error: find out whether it committed before running anything again."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from domain import writer
from domain.bus import CommandBus
from domain.commands import (
    AddressData,
    CreateProduct,
    OrderLineRequest,
    PlaceOrder,
    RegisterCustomer,
)
from domain.errors import CommitOutcomeUnknown
from domain.idempotency import CommandOutcome
from domain.model import orders
from domain.uow import utcnow
from domain.writer import Transactions

HOME = AddressData("1 Main Street", "Berlin", "10115", "DE")


class FailingCommits:
    """Makes the next ``n`` COMMITs raise, after committing or instead of committing."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, after_committing: bool) -> None:
        self.left = 0
        original = sa.engine.Connection.commit

        def commit(connection: sa.engine.Connection) -> None:
            if not self.left:
                return original(connection)
            self.left -= 1
            if after_committing:
                original(connection)
            raise sa.exc.OperationalError("COMMIT", {}, ConnectionResetError("connection lost"))

        monkeypatch.setattr(sa.engine.Connection, "commit", commit)

    def arm(self, n: int = 1) -> None:
        self.left = n


@pytest.fixture
def heard(bus: CommandBus) -> list[int]:
    positions: list[int] = []
    bus.on_commit(positions.append)
    return positions


async def shop(bus: CommandBus) -> PlaceOrder:
    mug = await bus.execute(CreateProduct("MUG", "Mug", "kitchen", 1000, "", 100))
    ada = await bus.execute(RegisterCustomer("ada@example.org", "Ada", HOME))
    assert mug.id is not None
    assert ada.id is not None
    return PlaceOrder(ada.id, (OrderLineRequest(mug.id, 1),))


async def order_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(orders)) or 0)


async def three_at_once(bus: CommandBus, order: PlaceOrder) -> list[Any]:
    return await asyncio.gather(*(bus.execute(order) for _ in range(3)), return_exceptions=True)


async def test_a_group_whose_commit_failed_after_committing_is_answered_not_run_again(
    bus: CommandBus, engine: AsyncEngine, heard: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    order = await shop(bus)
    FailingCommits(monkeypatch, after_committing=True).arm()
    answers = await three_at_once(bus, order)
    assert all(isinstance(a, CommandOutcome) for a in answers), answers
    assert len({a.id for a in answers}) == 3
    assert await order_count(engine) == 3
    assert heard[-1] == max(a.version for a in answers)


async def test_a_command_whose_commit_failed_after_committing_answers_its_result(
    bus: CommandBus, engine: AsyncEngine, heard: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    order = await shop(bus)
    FailingCommits(monkeypatch, after_committing=True).arm()
    placed = await bus.execute(order)
    assert await order_count(engine) == 1
    assert heard[-1] == placed.version


async def test_a_commit_that_failed_without_committing_is_run_again(
    bus: CommandBus, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    order = await shop(bus)
    failing = FailingCommits(monkeypatch, after_committing=False)
    failing.arm()
    await bus.execute(order)
    assert await order_count(engine) == 1
    failing.arm()
    answers = await three_at_once(bus, order)
    assert all(isinstance(a, CommandOutcome) for a in answers), answers
    assert await order_count(engine) == 4


async def test_an_outcome_that_cannot_be_found_out_is_answered_as_unknown(
    bus: CommandBus, engine: AsyncEngine, heard: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    order = await shop(bus)
    heard.clear()

    async def cannot_tell(self: Transactions, marker: Any) -> bool | None:
        return None

    monkeypatch.setattr(Transactions, "committed", cannot_tell)
    FailingCommits(monkeypatch, after_committing=True).arm()
    answers = await three_at_once(bus, order)
    assert all(isinstance(a, CommitOutcomeUnknown) for a in answers), answers
    assert "same idempotencyKey" in str(answers[0])
    assert await order_count(engine) == 3  # it did commit; nothing ran twice
    assert heard == []


async def test_a_commit_check_that_hangs_gives_up_within_its_time(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that never answers (a partition) must not stall the bus for good:
    every command queued behind this one waits for the check."""
    hung = asyncio.Event()

    async def never_answers(self: Transactions, marker: Any) -> str | None:
        hung.set()
        await asyncio.Event().wait()  # never set: it hangs until the check gives up
        return None

    monkeypatch.setattr(Transactions, "_commit_status", never_answers)
    monkeypatch.setattr(writer, "COMMIT_CHECK_SECONDS", 0.2)
    transactions = Transactions(engine, utcnow)
    try:
        marker = writer.CommitMarker(xid=1, event_id="e")
        assert await asyncio.wait_for(transactions.committed(marker), 5) is None
        assert hung.is_set()
    finally:
        transactions.close()
