"""Rebuilt projections equal the live ones, also while the live relay runs and writes go on."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from sqlalchemy.ext.asyncio import AsyncEngine

from domain import outbox
from domain.commands import (
    CancelOrder,
    ChangeProductPrice,
    RenameCustomer,
    RestockProduct,
    ShipOrder,
)
from projections import checkpoints
from projections.progress import Progress
from projections.rebuild import rebuild
from projections.registry import all_projections
from projections.relay import Relay
from tests.integration.shop import Shop, snapshot

Db = AsyncDatabase[dict[str, Any]]

pytestmark = pytest.mark.usefixtures("guard_mode")


async def some_business(shop: Shop, tag: str) -> None:
    mug, tee = await shop.product(f"MUG{tag}", 20), await shop.product(f"TEE{tag}", 4)
    ada, bob = await shop.customer("Ada"), await shop.customer("Bob")
    first = await shop.order(ada, (mug, 2), (tee, 1))
    second = await shop.order(bob, (mug, 1))
    await shop.order(ada, (tee, 2))
    await shop.do(ShipOrder(first, "T1"))
    await shop.do(CancelOrder(second, "no"))
    await shop.do(RestockProduct(tee, 3))
    await shop.do(ChangeProductPrice(mug, 999))
    await shop.do(RenameCustomer(ada, f"Ada {tag}"))


async def test_a_rebuild_equals_the_live_projections(engine: AsyncEngine, db: Db) -> None:
    shop = Shop(engine, db)
    await some_business(shop, "1")
    await shop.sync()
    live = await snapshot(db)
    seen: list[tuple[int, int]] = []
    result = await rebuild(engine, db, all_projections(), report=lambda *a: seen.append(a), grace=0)
    assert await snapshot(db) == live
    assert result.position == shop.relay.head
    assert seen[-1] == (result.position, result.position)
    stored = await checkpoints.load_all(db)
    assert {name: c.position for name, c in stored.items()} == {
        p.name: result.position for p in all_projections()
    }
    assert await checkpoints.rebuilding(db) == set()
    names = await db.list_collection_names()
    assert "products" not in names  # replaced, then dropped
    assert stored["products"].collections == {"products": "products__g1"}


async def test_a_rebuild_under_a_running_relay_and_live_writes_loses_nothing(
    engine: AsyncEngine, db: Db, mongo: AsyncMongoClient[dict[str, Any]]
) -> None:
    shop = Shop(engine, db)
    await some_business(shop, "1")
    shop.bus.on_commit(shop.relay.wake)
    running = asyncio.create_task(shop.relay.run())
    try:
        writes = asyncio.create_task(some_business(shop, "2"))
        await rebuild(engine, db, all_projections(), batch_size=7, grace=0)
        await writes
        await some_business(shop, "3")
        async with engine.connect() as conn:
            head = await outbox.head(conn)
        for projection in all_projections():
            caught_up = asyncio.ensure_future(
                shop.relay.progress.wait_for(projection.name, head, within=30)
            )
            await asyncio.wait([caught_up, running], return_when=asyncio.FIRST_COMPLETED)
            assert not running.done(), running
            await caught_up
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)

    fresh_name = f"fresh_{uuid.uuid4().hex[:8]}"
    fresh = mongo[fresh_name]
    try:
        replay = Relay(engine, fresh, all_projections(), Progress(), write_chunk=32)
        await replay.setup()
        while await replay.run_once():
            pass
        assert await snapshot(db) == await snapshot(fresh)
    finally:
        await mongo.drop_database(fresh_name)


async def test_projection_status_says_rebuilding_meanwhile(engine: AsyncEngine, db: Db) -> None:
    shop = Shop(engine, db)
    await some_business(shop, "1")
    states: list[bool] = []

    async def watch() -> None:
        states.append("orders" in await checkpoints.rebuilding(db))

    progress_checks: list[asyncio.Task[None]] = []
    await rebuild(
        engine, db, all_projections(),
        report=lambda *_: progress_checks.append(asyncio.ensure_future(watch())), grace=0,
    )  # fmt: skip
    await asyncio.gather(*progress_checks)
    assert states[0] is True
    assert "orders" not in await checkpoints.rebuilding(db)
