"""A small shop on real stores for read-model tests: the command bus and an all-projection relay."""

from __future__ import annotations

import uuid
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.bus import CommandBus
from domain.commands import (
    AddressData,
    Command,
    CreateProduct,
    OrderLineRequest,
    PlaceOrder,
    RegisterCustomer,
)
from projections import checkpoints
from projections.progress import Progress
from projections.readdb import ReadDatabase
from projections.registry import all_projections
from projections.relay import Relay

Db = AsyncDatabase[dict[str, Any]]
HOME = AddressData(line1="Main St 1", city="Berlin", postal_code="10115", country="DE")
COLLECTIONS = ("products", "customers", "orders", "product_sales", "dashboard",
               "dashboard_stock", "events", "order_history_pages", "wishlists")  # fmt: skip


class Shop:
    """The command bus and a relay over all projections, on one pair of stores."""

    def __init__(self, engine: AsyncEngine, db: Db) -> None:
        self.bus = CommandBus(engine)
        self.db = ReadDatabase(db)
        self.relay = Relay(engine, self.db, all_projections(), Progress(), write_chunk=32)

    async def do(self, command: Command) -> str:
        outcome = await self.bus.execute(command)
        assert outcome.id is not None
        return outcome.id

    async def sync(self) -> None:
        if not self.relay.positions:
            await self.relay.setup()
        while await self.relay.run_once() == self.relay.batch_size:
            pass

    async def product(self, sku: str, stock: int = 10, price: int = 1000) -> str:
        return await self.do(
            CreateProduct(sku=sku, name=f"{sku} name", category="c", price_cents=price,
                          initial_stock=stock)
        )  # fmt: skip

    async def customer(self, name: str = "Ada") -> str:
        email = f"{name.lower()}-{uuid.uuid4().hex[:6]}@example.org"
        return await self.do(RegisterCustomer(email=email, name=name, address=HOME))

    async def order(self, customer_id: str, *lines: tuple[str, int]) -> str:
        return await self.do(
            PlaceOrder(customer_id, tuple(OrderLineRequest(p, q) for p, q in lines))
        )


async def serving(db: Db) -> ReadDatabase:
    """``db`` as a reader sees it now: each read model in the collection its checkpoint
    names (a rebuild's generation, say)."""
    served = ReadDatabase(db)
    served.switch((await checkpoints.load_all(db)).values())
    return served


async def snapshot(db: Db) -> dict[str, list[dict[str, Any]]]:
    """Every read-model document, by collection and id, from the collections serving now."""
    served = await serving(db)
    return {name: await served[name].find({}).sort("_id").to_list() for name in COLLECTIONS}
