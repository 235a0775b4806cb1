"""The unit of work: one write transaction holding state rows, outbox events and idempotency."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from domain import outbox
from domain.repositories import (
    CustomerRepository,
    OrderRepository,
    ProductRepository,
    Repository,
    Stock,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UnitOfWork:
    """``async with uow:`` opens a write transaction that rolls back unless committed.

    :meth:`flush` saves every aggregate that raised events and appends those events
    to the outbox, inside the same transaction. Several commands can run one after
    another in one transaction (group commit): :meth:`next_command` gives each fresh
    repositories and its own clock reading.
    """

    conn: AsyncConnection
    products: ProductRepository
    customers: CustomerRepository
    orders: OrderRepository
    stock: Stock

    def __init__(self, engine: AsyncEngine, clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.clock = clock
        self.metadata: dict[str, Any] = {}

    async def __aenter__(self) -> Self:
        self.conn = await self.engine.connect()
        try:
            await self.conn.execution_options(write=True)
            await self.conn.begin()
        except BaseException:
            await self.conn.close()
            raise
        self._committed = False
        self.next_command()
        return self

    @classmethod
    def bound(cls, conn: AsyncConnection, clock: Callable[[], datetime] = utcnow) -> UnitOfWork:
        """A unit of work on a connection whose transaction its caller opens and ends."""
        uow = cls.__new__(cls)
        uow.clock, uow.metadata, uow.conn, uow._committed = clock, {}, conn, False
        uow.next_command()
        return uow

    def next_command(self, metadata: dict[str, Any] | None = None) -> None:
        """Starts the next command in this transaction: empty identity maps, a new ``now``."""
        self.now = self.clock()
        self.metadata = dict(metadata or {})
        self.products = ProductRepository(self.conn)
        self.customers = CustomerRepository(self.conn)
        self.orders = OrderRepository(self.conn)
        self.stock = Stock(self.conn)
        self.flushed = False

    @property
    def wrote(self) -> bool:
        """Whether the current command may have changed rows (so its failure needs a rollback)."""
        return self.flushed or self.stock.wrote

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if not self._committed:
                await self.conn.rollback()
        finally:
            await self.conn.close()

    @property
    def repositories(self) -> tuple[Repository[Any], ...]:
        # Customers before orders, products before order lines: the foreign keys' order.
        return (self.products, self.customers, self.orders)

    async def flush(self) -> int | None:
        """Saves changed aggregates, appends their events; the last position or ``None``."""
        self.flushed = True
        pending = []
        for repository in self.repositories:
            for aggregate in repository.seen.values():
                if aggregate.events:
                    await repository.save(aggregate)
                    pending.extend(aggregate.events)
                    aggregate.events.clear()
        positions = await outbox.append(self.conn, pending, now=self.now, metadata=self.metadata)
        return positions[-1] if positions else None

    async def head(self) -> int:
        return await outbox.head(self.conn)

    async def commit(self) -> None:
        await self.conn.commit()
        self._committed = True
