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
from projections.lease import Lease, Tenure
from projections.progress import Progress
from projections.rebuild import (
    REBUILD_LEASE,
    REBUILD_TTL,
    RebuildRunning,
    rebuild,
    rebuild_running,
)
from projections.registry import all_projections
from projections.relay import Relay
from tests.conftest import eventually
from tests.integration.shop import Shop, snapshot
from tests.integration.test_relay_faults import store_clock_passes

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


# These tests move the write store's clock (the lease's expiry is by that clock) rather
# than wait for it: a rebuild stops answering once it has not renewed for half the ttl.
TTL = REBUILD_TTL


@contextlib.asynccontextmanager
async def running_rebuild(engine: AsyncEngine, db: Db) -> AsyncIterator[Lease]:
    """Another rebuild's lease, held for the block (the test renews it as it runs)."""
    holder = Lease(engine, db, name=REBUILD_LEASE, ttl=TTL)
    assert await holder.acquire()
    yield holder


async def test_a_dead_rebuilds_lease_is_waited_out_and_the_next_rebuild_runs(
    engine: AsyncEngine, db: Db
) -> None:
    """A rebuild killed (kill -9, out of memory) leaves its lease unrenewed: the next one
    says whose it is and when it expires, waits until then and runs."""
    shop = Shop(engine, db)
    await shop.product("MUG")
    dead = Lease(engine, db, name=REBUILD_LEASE, ttl=TTL)
    assert await dead.acquire()  # and never renewed
    await store_clock_passes(engine, TTL * 0.6)  # past the half-life of a renewal
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

    [waiting] = await eventually(stopped_answering, within=30)
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

    await store_clock_passes(engine, TTL * 0.5)  # the lease expires
    result = await asyncio.wait_for(next_one, timeout=60)
    assert result.position == 1
    assert (await dead.tenure()).epoch == taken.epoch + 1  # the next rebuild's tenure


async def test_a_running_rebuilds_lease_still_refuses_the_next_rebuild(
    engine: AsyncEngine, db: Db
) -> None:
    shop = Shop(engine, db)
    await shop.product("MUG")
    said: list[str] = []
    async with running_rebuild(engine, db) as holder:
        next_one = asyncio.create_task(
            rebuild(engine, db, all_projections(), grace=0, wait="stopped", say=said.append)
        )

        async def checking() -> bool:
            assert not next_one.done(), next_one
            return any("checking whether its rebuild still runs" in m for m in said)

        await eventually(checking, within=30)
        await store_clock_passes(engine, 1)
        assert await holder.renew()  # the renewal it watches for: that rebuild runs
        with pytest.raises(RebuildRunning) as refused:
            await asyncio.wait_for(next_one, timeout=30)
        running = refused.value
        assert running.answering
        assert running.holder == holder.owner
        assert 0 < running.seconds_left <= TTL
        assert str(running).startswith(f"another rebuild is running (holder {holder.owner}")
        assert f"expires at {running.expires_at:%Y-%m-%d %H:%M:%S} UTC" in str(running)
        admin = await rebuild_running(engine, db)
        assert admin is not None
        assert admin.answering
        assert admin.holder == holder.owner


async def test_a_waiting_rebuild_runs_once_the_running_one_finishes(
    engine: AsyncEngine, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    looks = 0
    tenure = Lease.tenure

    async def counted(lease: Lease) -> Tenure:
        nonlocal looks
        looks += 1
        return await tenure(lease)

    monkeypatch.setattr(Lease, "tenure", counted)
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

        await eventually(told, within=30)
        assert f"another rebuild is running (holder {holder.owner}" in said[0]
        # It waits on past the lease's first expiry (1.2 ttls pass by the store's clock),
        # which the running rebuild renews, looking at the lease again after each move.
        first = await holder.tenure()
        for _ in range(3):
            await store_clock_passes(engine, TTL * 0.4)
            assert await holder.renew()
            seen = looks

            async def looked_again(seen: int = seen) -> bool:
                assert not waiting.done(), waiting
                return looks >= seen + 2

            await eventually(looked_again, within=30)
        assert said == [said[0]]  # nothing new to say: the same holder, still running
    await holder.release()  # the running rebuild finishes
    result = await asyncio.wait_for(waiting, timeout=60)
    assert result.position == 1
    assert (await holder.tenure()).epoch == first.epoch + 1
