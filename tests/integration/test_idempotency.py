"""Idempotency keys record the first command's answer: its result or its refusal."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.aggregate import Aggregate
from domain.bus import CommandBus
from domain.commands import (
    AddressData,
    CreateProduct,
    OrderLineRequest,
    PlaceOrder,
    RegisterCustomer,
    RestockProduct,
)
from domain.errors import DomainError, IdempotencyKeyReused, InsufficientStock, InvalidState
from domain.handlers import HANDLERS
from domain.model import idempotency_keys, orders, products
from domain.uow import UnitOfWork

HOME = AddressData("1 Main Street", "Berlin", "10115", "DE")


async def setup_shop(bus: CommandBus, stock: int = 1) -> tuple[str, str]:
    mug = await bus.execute(CreateProduct("MUG", "Mug", "kitchen", 1000, "", stock))
    ada = await bus.execute(RegisterCustomer("ada@example.org", "Ada", HOME))
    assert mug.id is not None
    assert ada.id is not None
    return mug.id, ada.id


def problems(error: DomainError) -> list[tuple[str, str, str | None]]:
    return [(p.code, p.message, p.field) for p in error.problems]


async def stock(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(sa.select(products.c.stock_on_hand, products.c.stock_reserved))
        ).one()
    return row.stock_on_hand, row.stock_reserved


async def count(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


async def test_a_refused_first_use_answers_the_same_refusal_to_a_repeat(
    bus: CommandBus, engine: AsyncEngine
) -> None:
    mug, ada = await setup_shop(bus, stock=1)
    order = PlaceOrder(ada, (OrderLineRequest(mug, 2),))
    with pytest.raises(InsufficientStock) as first:
        await bus.execute(order, idempotency_key="K")
    await bus.execute(RestockProduct(mug, 5))  # the order would go through now
    with pytest.raises(DomainError) as again:
        await bus.execute(order, idempotency_key="K")
    assert type(again.value) is InsufficientStock
    assert problems(again.value) == problems(first.value)
    assert await count(engine, orders) == 0


async def test_a_refused_first_use_keeps_the_key_from_any_other_command(
    bus: CommandBus, engine: AsyncEngine
) -> None:
    """... and the IDEMPOTENCY_KEY_REUSED answer is not recorded in its place."""
    mug, ada = await setup_shop(bus, stock=1)
    order = PlaceOrder(ada, (OrderLineRequest(mug, 2),))
    with pytest.raises(InsufficientStock):
        await bus.execute(order, idempotency_key="K")
    with pytest.raises(IdempotencyKeyReused):
        await bus.execute(RestockProduct(mug, 5), idempotency_key="K")
    assert await stock(engine) == (1, 0)
    with pytest.raises(InsufficientStock):
        await bus.execute(order, idempotency_key="K")
    assert await count(engine, idempotency_keys) == 1


async def test_several_problems_are_recorded_and_answered_again_all_together(
    bus: CommandBus, engine: AsyncEngine
) -> None:
    bad = CreateProduct("bad sku", "", "kitchen", -1)
    with pytest.raises(DomainError) as first:
        await bus.execute(bad, idempotency_key="K")
    assert await count(engine, idempotency_keys) == 1
    with pytest.raises(DomainError) as again:
        await bus.execute(bad, idempotency_key="K")
    assert len(problems(first.value)) == 3
    assert problems(again.value) == problems(first.value)
    assert str(again.value) == str(first.value)


async def test_a_refusal_after_writing_keeps_nothing_but_its_key(
    engine: AsyncEngine,
) -> None:
    """What a refused command wrote before it was refused is undone; its key's record
    stays, and a repeat answers from it without running the command again."""
    calls: list[Any] = []

    async def reserve_then_refuse(command: RestockProduct, uow: UnitOfWork) -> Aggregate:
        calls.append(command)
        assert await uow.stock.reserve(command.product_id, 1)
        raise InvalidState("refused after reserving a unit", "id")

    bus = CommandBus(engine, {**HANDLERS, RestockProduct: reserve_then_refuse})
    try:
        mug, _ = await setup_shop(bus, stock=3)
        for _ in range(2):
            with pytest.raises(InvalidState):
                await bus.execute(RestockProduct(mug, 1), idempotency_key="K")
        assert len(calls) == 1
        assert await stock(engine) == (3, 0)
        with pytest.raises(InvalidState):
            await bus.execute(RestockProduct(mug, 1))  # without a key: runs, undone again
        assert await stock(engine) == (3, 0)
    finally:
        bus.close()


async def test_keys_older_than_the_retention_are_purged_and_their_retries_run_again(
    bus: CommandBus, engine: AsyncEngine
) -> None:
    from datetime import UTC, datetime, timedelta

    from app.bootstrap import purge_idempotency_keys
    from domain import idempotency

    first = await bus.execute(CreateProduct("OLD", "Old", "c", 100, "", 1), idempotency_key="old")
    kept = await bus.execute(CreateProduct("NEW", "New", "c", 100, "", 1), idempotency_key="new")
    eight_days_ago = datetime.now(UTC) - timedelta(days=8)
    async with engine.begin() as conn:
        await conn.execute(
            idempotency_keys.update()
            .where(idempotency_keys.c.key.like("%old"))
            .values(created_at=eight_days_ago)
        )
        assert await idempotency.purge(conn, datetime.now(UTC) - timedelta(days=7)) == 1
    assert await count(engine, idempotency_keys) == 1
    # A retry of the kept key answers as before; the purged one runs again (SKU taken).
    again = await bus.execute(CreateProduct("NEW", "New", "c", 100, "", 1), idempotency_key="new")
    assert again == kept
    with pytest.raises(DomainError) as rerun:
        await bus.execute(CreateProduct("OLD", "Old", "c", 100, "", 1), idempotency_key="old")
    assert problems(rerun.value)[0][0] == "DUPLICATE"
    assert first.id is not None

    # The background task deletes in batches until nothing old is left.
    async with engine.begin() as conn:
        await conn.execute(idempotency_keys.update().values(created_at=eight_days_ago))
    task = asyncio.ensure_future(purge_idempotency_keys(engine, timedelta(days=7), every=3600))
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while await count(engine, idempotency_keys):
            assert asyncio.get_running_loop().time() < deadline, "keys not purged"
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
