"""Group commit: concurrent commands share a transaction, with each one's own outcome."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from domain import outbox
from domain.bus import CommandBus
from domain.commands import (
    AddressData,
    CreateProduct,
    OrderLineRequest,
    PlaceOrder,
    RegisterCustomer,
)
from domain.errors import DomainError, Duplicate, InsufficientStock
from domain.model import customers, products

ADDRESS = AddressData("1 Main Street", "Berlin", "10115", "DE")


class CountingBus(CommandBus):
    """Counts commits that wrote events (one per transaction)."""

    def __init__(self, engine: AsyncEngine, **options: Any) -> None:
        super().__init__(engine, **options)
        self.commits: list[int] = []
        self.on_commit(self.commits.append)


async def run_together(bus: CommandBus, *commands: Any, key: str | None = None) -> list[Any]:
    return await asyncio.gather(
        *(bus.execute(c, idempotency_key=key) for c in commands), return_exceptions=True
    )


def customer(n: int, email: str | None = None) -> RegisterCustomer:
    return RegisterCustomer(email or f"c{n}@example.com", f"Customer {n}", ADDRESS)


async def test_concurrent_commands_commit_together_each_with_its_own_answer(
    engine: AsyncEngine,
) -> None:
    bus = CountingBus(engine)
    commands = [customer(n) for n in range(20)]
    commands[7] = customer(7, email="c3@example.com")  # refused: c3 registers first
    results = await run_together(bus, *commands)

    assert isinstance(results[7], Duplicate)
    accepted = [r for i, r in enumerate(results) if i != 7]
    assert not [r for r in accepted if isinstance(r, BaseException)]
    assert sorted(r.version for r in accepted) == list(range(1, 20))  # arrival order, no gaps
    assert len(bus.commits) < len(accepted), "some commands should have shared a commit"
    async with engine.connect() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(customers)) == 19
        events = await outbox.read_after(conn, 0, 100)
    assert [e.aggregate_id for e in events] == [r.id for r in accepted]


async def test_a_command_that_fails_after_writing_leaves_nothing_and_spares_the_rest(
    engine: AsyncEngine,
) -> None:
    """The second line is short after the first was reserved: the reservation is undone,
    and the other commands of its group still commit."""
    bus = CountingBus(engine)
    plenty = await bus.execute(CreateProduct("plenty", "Plenty", "kitchen", 100, "", 100))
    scarce = await bus.execute(CreateProduct("scarce", "Scarce", "kitchen", 100, "", 1))
    buyer = await bus.execute(customer(0))
    short = PlaceOrder(buyer.id, (OrderLineRequest(plenty.id, 5), OrderLineRequest(scarce.id, 2)))
    fine = [PlaceOrder(buyer.id, (OrderLineRequest(plenty.id, 1),)) for _ in range(6)]
    results = await run_together(bus, *fine[:3], short, *fine[3:])

    assert isinstance(results[3], InsufficientStock)
    assert not [r for i, r in enumerate(results) if i != 3 and isinstance(r, BaseException)]
    async with engine.connect() as conn:
        reserved = dict(
            (await conn.execute(sa.select(products.c.id, products.c.stock_reserved))).all()
        )
    assert reserved == {plenty.id: 6, scarce.id: 0}


async def test_one_idempotency_key_twice_in_a_group_runs_once(engine: AsyncEngine) -> None:
    bus = CountingBus(engine)
    first, second, *others = await run_together(bus, *[customer(1)] * 2, key="register-1")
    assert not others
    assert first == second
    async with engine.connect() as conn:
        assert len(await outbox.read_after(conn, 0, 100)) == 1


async def test_refusals_in_a_group_are_the_same_as_one_by_one(engine: AsyncEngine) -> None:
    grouped = await run_together(
        CommandBus(engine),
        customer(1),
        customer(2, email="not an email"),
        customer(3, email="c1@example.com"),
    )
    assert not isinstance(grouped[0], BaseException)
    assert all(isinstance(r, DomainError) for r in grouped[1:])
    alone = CommandBus(engine, group_commit=False)
    for command, result in zip([customer(2, "not an email"), customer(3, "c1@example.com")],
                               grouped[1:], strict=True):  # fmt: skip
        with pytest.raises(DomainError) as refused:
            await alone.execute(command)
        assert (type(refused.value), str(refused.value)) == (type(result), str(result))
