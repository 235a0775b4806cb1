"""The write model's state rows at one moment, with the outbox head they go with.

For ``cqrs-shop verify``, which holds the read models to the write model where that
is the truth: the rows and the head come from one snapshot (one transaction, at
REPEATABLE READ on PostgreSQL; SQLite's deferred transaction reads one snapshot in
WAL mode), so the rows are exactly what the events up to the head made them.
Everything is read into memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from domain import outbox
from domain.model import customers, order_lines, orders, products

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class WriteModelState:
    head: int
    """The last outbox position the rows include."""
    products: list[Row]
    customers: list[Row]
    orders: list[Row]
    order_lines: list[Row]


async def read_state(engine: AsyncEngine) -> WriteModelState:
    """Every product, customer, order and order line, and the outbox head, as of one moment."""
    async with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            head = await outbox.head(conn)

            async def rows(table: sa.Table) -> list[Row]:
                return [dict(row) for row in (await conn.execute(sa.select(table))).mappings()]

            return WriteModelState(
                head=head,
                products=await rows(products),
                customers=await rows(customers),
                orders=await rows(orders),
                order_lines=await rows(order_lines),
            )
