"""Rebuilt projections equal the live ones, also while the live relay runs and writes go on."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
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
from projections.lease import Lease
from projections.progress import Progress
from projections.rebuild import REBUILD_LEASE, RebuildRunning, rebuild, rebuild_running
from projections.registry import all_projections
from projections.relay import Relay
from tests.conftest import eventually
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


# A shorter rebuild lease keeps these tests short: a running rebuild renews it every
# 1.3 s; one that has not renewed it for 2 s has stopped answering.
SHORT_TTL = 4.0


@pytest.fixture
def short_lease(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr("projections.rebuild.REBUILD_TTL", SHORT_TTL)
    return SHORT_TTL


@contextlib.asynccontextmanager
async def running_rebuild(engine: AsyncEngine, db: Db) -> AsyncIterator[Lease]:
    """Another rebuild's lease, renewed as a running rebuild renews it, for the block."""
    holder = Lease(engine, db, name=REBUILD_LEASE, ttl=SHORT_TTL)
    assert await holder.acquire()

    async def keep() -> None:
        while True:
            await asyncio.sleep(SHORT_TTL / 3)  # a running rebuild's cadence, not a wait
            assert await holder.renew()

    keeper = asyncio.create_task(keep())
    try:
        yield holder
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)


@pytest.mark.usefixtures("short_lease")
async def test_a_dead_rebuilds_lease_is_waited_out_and_the_next_rebuild_runs(
    engine: AsyncEngine, db: Db
) -> None:
    """A rebuild killed (kill -9, out of memory) leaves its lease unrenewed: the next one
    says whose it is and when it expires, waits until then and runs."""
    shop = Shop(engine, db)
    await shop.product("MUG")
    dead = Lease(engine, db, name=REBUILD_LEASE, ttl=SHORT_TTL)
    assert await dead.acquire()  # and never renewed
    taken = await dead.tenure()
    said: list[str] = []
    started = asyncio.Event()
    next_one = asyncio.create_task(
        rebuild(engine, db, all_projections(), grace=0, wait="stopped", say=said.append,
                started=started.set)
    )  # fmt: skip

    async def stopped_answering() -> list[str]:
        assert not next_one.done(), next_one
        return [m for m in said if "stopped answering" in m]

    [waiting] = await eventually(stopped_answering, within=SHORT_TTL)
    assert f"holder {dead.owner}" in waiting
    assert f"expires at {taken.expires:%Y-%m-%d %H:%M:%S} UTC" in waiting
    assert "waiting for it to expire" in waiting
    # The admin mutation says the same without waiting.
    refusal = await rebuild_running(engine, db)
    assert refusal is not None
    assert not refusal.answering
    assert refusal.holder == dead.owner
    assert refusal.expires_at == taken.expires
    assert "stopped answering" in str(refusal)
    assert not started.is_set()

    result = await next_one
    assert result.position == 1
    assert (await dead.tenure()).epoch == taken.epoch + 1  # the next rebuild's tenure


@pytest.mark.usefixtures("short_lease")
async def test_a_running_rebuilds_lease_still_refuses_the_next_rebuild(
    engine: AsyncEngine, db: Db
) -> None:
    shop = Shop(engine, db)
    await shop.product("MUG")
    async with running_rebuild(engine, db) as holder:
        with pytest.raises(RebuildRunning) as refused:
            await rebuild(engine, db, all_projections(), grace=0, wait="stopped")
        running = refused.value
        assert running.answering
        assert running.holder == holder.owner
        assert 0 < running.seconds_left <= SHORT_TTL
        assert str(running).startswith(f"another rebuild is running (holder {holder.owner}")
        assert f"expires at {running.expires_at:%Y-%m-%d %H:%M:%S} UTC" in str(running)
        admin = await rebuild_running(engine, db)
        assert admin is not None
        assert admin.answering
        assert admin.holder == holder.owner


@pytest.mark.usefixtures("short_lease")
async def test_a_waiting_rebuild_runs_once_the_running_one_finishes(
    engine: AsyncEngine, db: Db
) -> None:
    shop = Shop(engine, db)
    await shop.product("MUG")
    said: list[str] = []
    async with running_rebuild(engine, db) as holder:
        waiting = asyncio.create_task(
            rebuild(engine, db, all_projections(), grace=0, wait="always", say=said.append)
        )

        async def told() -> bool:
            assert not waiting.done(), waiting
            return any("waiting for it to finish" in m for m in said)

        await eventually(told, within=SHORT_TTL)
        assert f"another rebuild is running (holder {holder.owner}" in said[0]
        # It waits on past the lease's first expiry, which the running rebuild renews.
        first = await holder.tenure()

        async def first_expiry_passed() -> bool:
            return (await holder.tenure()).now > first.expires_at

        await eventually(first_expiry_passed, within=2 * SHORT_TTL)
        assert not waiting.done(), waiting
    await holder.release()  # the running rebuild finishes
    result = await asyncio.wait_for(waiting, timeout=60)
    assert result.position == 1
    assert (await holder.tenure()).epoch == first.epoch + 1
