"""Several server processes on one PostgreSQL: two command buses on two engines, racing.

Each "process" is a CommandBus with its own engine (its own connection pool), as two
`api` processes would have; they share nothing but the database.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from domain import migrations
from domain.bus import CommandBus
from domain.commands import (
    AddressData,
    CancelOrder,
    ChangeProductPrice,
    Command,
    CreateProduct,
    OrderLineRequest,
    PlaceOrder,
    RegisterCustomer,
    ShipOrder,
)
from domain.errors import DomainError
from domain.idempotency import CommandOutcome
from domain.model import order_lines, orders, products
from domain.store import create_engine, create_schema, schema_state
from tests.conftest import fresh_database

HOME = AddressData("1 Main Street", "Berlin", "10115", "DE")
# Deadlocks are found after deadlock_timeout (1 s by default); these tests provoke many.
FAST_DEADLOCKS = {"server_settings": {"deadlock_timeout": "20ms"}}


@pytest.fixture
async def two_processes(postgres_url: str) -> AsyncIterator[tuple[CommandBus, CommandBus]]:
    async with fresh_database(postgres_url) as url:
        engines = [create_engine(url, connect_args=FAST_DEADLOCKS) for _ in range(2)]
        await create_schema(engines[0])
        buses = (CommandBus(engines[0]), CommandBus(engines[1]))
        try:
            yield buses
        finally:
            for bus in buses:
                bus.close()
            for engine in engines:
                await engine.dispose()


async def new_product(bus: CommandBus, sku: str, stock: int) -> str:
    outcome = await bus.execute(CreateProduct(sku, sku.title(), "kitchen", 1000, "", stock))
    assert outcome.id is not None
    return outcome.id


async def new_customer(bus: CommandBus) -> str:
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    outcome = await bus.execute(RegisterCustomer(email, "Ada", HOME))
    assert outcome.id is not None
    return outcome.id


def order(customer_id: str, *product_ids: str, quantity: int = 1) -> PlaceOrder:
    return PlaceOrder(customer_id, tuple(OrderLineRequest(p, quantity) for p in product_ids))


async def test_one_key_sent_to_two_processes_at_once_answers_the_first_result_to_both(
    two_processes: tuple[CommandBus, CommandBus],
) -> None:
    """The second use of a key waits for the first to commit and answers its result,
    instead of running the command again against the state the first one left."""
    first, second = two_processes
    ada = await new_customer(first)
    last_units = [await new_product(first, f"last-{n}", 1) for n in range(10)]
    priced = [await new_product(first, f"priced-{n}", 100) for n in range(10)]
    placed = [await first.execute(order(ada, p)) for p in priced]
    pairs: list[Command] = []
    for n in range(10):
        pairs += [
            order(ada, last_units[n]),  # the second would find it sold out
            CancelOrder(placed[n].id or "", "changed my mind"),  # ... the order cancelled
            CreateProduct(f"new-{n}", "New", "kitchen", 500),  # ... the SKU taken
            ChangeProductPrice(priced[n], 1500, expected_version=1),  # ... the version moved
        ]
    keys = [f"key-{n}" for n in range(len(pairs))]

    answers = await asyncio.gather(
        *(bus.execute(c, idempotency_key=k) for c, k in zip(pairs, keys, strict=True)
          for bus in (first, second)),
        return_exceptions=True,
    )  # fmt: skip

    for n in range(len(pairs)):
        a, b = answers[2 * n], answers[2 * n + 1]
        assert isinstance(a, CommandOutcome), (pairs[n], a)
        assert a == b, (pairs[n], a, b)
    async with first.engine.connect() as conn:
        order_count = await conn.scalar(sa.select(sa.func.count()).select_from(orders))
    assert order_count == 20


async def stock_is_consistent(engine: AsyncEngine, initial: dict[str, int]) -> None:
    """On hand = initial - shipped; reserved = quantities of open orders; per product."""
    moved = (
        sa.select(
            order_lines.c.product_id,
            orders.c.status,
            sa.func.sum(order_lines.c.quantity).label("quantity"),
        )
        .join(orders, orders.c.id == order_lines.c.order_id)
        .group_by(order_lines.c.product_id, orders.c.status)
    )
    async with engine.connect() as conn:
        stock = {
            row.id: (row.stock_on_hand, row.stock_reserved)
            for row in await conn.execute(
                sa.select(products.c.id, products.c.stock_on_hand, products.c.stock_reserved)
            )
        }
        quantities = {(r.product_id, r.status): int(r.quantity) for r in await conn.execute(moved)}
    for product_id, on_hand in initial.items():
        shipped = quantities.get((product_id, "SHIPPED"), 0)
        placed = quantities.get((product_id, "PLACED"), 0)
        assert stock[product_id] == (on_hand - shipped, placed), product_id


async def test_orders_cancels_and_ships_in_two_processes_never_fail_with_a_deadlock(
    two_processes: tuple[CommandBus, CommandBus],
) -> None:
    """Orders over overlapping products, their lines in opposite orders in the two
    processes, then cancelled, shipped and ordered again all at once: every answer is
    a result or a refusal, never a database error, and the stock adds up."""
    buses = two_processes
    rng = random.Random(7)
    goods = [await new_product(buses[0], f"good-{n}", 10_000) for n in range(6)]
    customers = [await new_customer(buses[0]) for _ in range(8)]

    def some_order(forward: bool) -> PlaceOrder:
        lines = sorted(rng.sample(goods, rng.randint(2, 4)), reverse=not forward)
        return order(rng.choice(customers), *lines, quantity=rng.randint(1, 3))

    async def send(work: list[tuple[CommandBus, Command]]) -> list[Any]:
        return await asyncio.gather(
            *(bus.execute(command) for bus, command in work), return_exceptions=True
        )

    answers: list[Any] = []
    open_orders: list[str] = []
    for _ in range(3):
        placing = [(buses[n % 2], some_order(forward=n % 2 == 0)) for n in range(60)]
        placed = await send(placing)
        answers += placed
        open_orders += [o.id for o in placed if isinstance(o, CommandOutcome)]
        rng.shuffle(open_orders)
        moving: list[tuple[CommandBus, Command]] = []
        for n, order_id in enumerate(open_orders[:40]):
            move = CancelOrder(order_id, "no") if n % 2 else ShipOrder(order_id, f"T-{n}")
            moving.append((buses[n % 2], move))
        moving += [(buses[n % 2], some_order(forward=n % 3 == 0)) for n in range(40)]
        rng.shuffle(moving)
        moved = await send(moving)
        answers += moved
        del open_orders[:40]
        open_orders += [
            o.id
            for (_, c), o in zip(moving, moved, strict=True)
            if isinstance(c, PlaceOrder) and isinstance(o, CommandOutcome)
        ]

    raw = [a for a in answers if isinstance(a, BaseException) and not isinstance(a, DomainError)]
    assert not raw, raw[:3]
    assert all(isinstance(a, CommandOutcome) for a in answers), "nothing here should be refused"
    await stock_is_consistent(buses[0].engine, dict.fromkeys(goods, 10_000))


async def test_two_processes_create_the_schema_at_once_on_a_fresh_database(
    postgres_url: str,
) -> None:
    """They take turns: one runs every revision, the other finds nothing left to do, and
    the store ends at the newest revision (create_schema)."""
    for _ in range(5):
        async with fresh_database(postgres_url) as url:
            engines = [create_engine(url) for _ in range(2)]
            try:
                ran = await asyncio.gather(*(create_schema(engine) for engine in engines))
                state = await schema_state(engines[0])
            finally:
                for engine in engines:
                    await engine.dispose()
            assert state.at_head, state
            every = tuple(reversed([r.revision for r in migrations.scripts().walk_revisions()]))
            assert sorted(ran, key=len) == [(), every], ran
