"""Signals across processes through the write store (projections.signals), on SQLite
and PostgreSQL: commits wake relays, the relay's progress reaches every reader."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from pymongo.asynchronous.database import AsyncDatabase
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.bus import CommandBus
from domain.commands import CreateProduct, RestockProduct
from domain.store import create_engine, create_schema
from projections import checkpoints
from projections.products import ProductsProjection
from projections.progress import Progress, ProgressFollower
from projections.relay import Relay
from projections.signals import Advance, ProgressFeed, WriteStoreSignals, request_resume
from projections.tables import relay_progress
from tests.conftest import eventually, fresh_database

Db = AsyncDatabase[dict[str, Any]]
WITHIN = 10.0


class Counter:
    """Counts calls; ``next()`` waits for one more than it has seen."""

    def __init__(self) -> None:
        self.calls = 0
        self._changed = asyncio.Event()

    def __call__(self) -> None:
        self.calls += 1
        self._changed.set()

    async def next(self) -> None:
        seen = self.calls
        async with asyncio.timeout(WITHIN):
            while self.calls == seen:
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def listening(engine: AsyncEngine) -> AsyncIterator[tuple[Counter, Counter]]:
    """Signals on a separate engine (another process would have its own)."""
    other = create_engine(engine.url.render_as_string(hide_password=False))
    outbox, progress = Counter(), Counter()
    signals = WriteStoreSignals(other, on_outbox=outbox, on_progress=progress)
    task = asyncio.create_task(signals.run())
    try:
        async with asyncio.timeout(WITHIN):
            await signals.connected.wait()
        await asyncio.sleep(0)  # let the signals sent on connecting through
        yield outbox, progress
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await other.dispose()


async def create(bus: CommandBus, sku: str = "MUG-1") -> str:
    outcome = await bus.execute(
        CreateProduct(sku=sku, name="Mug", category="kitchen", price_cents=1, initial_stock=1)
    )
    assert outcome.id is not None
    return outcome.id


async def test_a_commit_in_one_process_signals_the_outbox_in_another(
    engine: AsyncEngine, bus: CommandBus
) -> None:
    async with listening(engine) as (outbox, _):
        committed = asyncio.create_task(outbox.next())
        await create(bus)
        await committed


async def test_a_published_batch_signals_progress_and_reads_back(engine: AsyncEngine) -> None:
    feed = ProgressFeed(engine)
    start = await feed.last_id()
    async with listening(engine) as (_, progress):
        signalled = asyncio.create_task(progress.next())
        await feed.publish(3, [Advance("products", 7, frozenset({"a", "b"}))])
        await signalled
    [row] = await feed.read_after(start)
    assert (row.epoch, row.resync) == (3, False)
    assert row.advances == (Advance("products", 7, frozenset({"a", "b"})),)


async def test_keys_that_json_would_change_are_published_as_any(engine: AsyncEngine) -> None:
    feed = ProgressFeed(engine)
    start = await feed.last_id()
    await feed.publish(1, [Advance("p", 1, frozenset({("tuple", 1)})), Advance("q", 1, None)])
    [row] = await feed.read_after(start)
    assert {a.projection: a.keys for a in row.advances} == {"p": None, "q": None}


async def test_a_listener_that_lost_its_connection_reconnects_and_signals_both(
    postgres_url: str,
) -> None:
    """Only PostgreSQL has a listening connection to lose (LISTEN/NOTIFY), so this runs
    on a PostgreSQL database of its own whatever the write store under test."""
    async with fresh_database(postgres_url) as url:
        engine = create_engine(url)
        await create_schema(engine)
        bus = CommandBus(engine)
        try:
            async with listening(engine) as (outbox, progress):
                reconnected = asyncio.gather(outbox.next(), progress.next())
                async with engine.connect() as conn:
                    ended = await conn.scalar(
                        sa.text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid() "
                            "AND datname = current_database()"
                        )
                    )
                assert ended == 1
                await reconnected
                committed = asyncio.create_task(outbox.next())
                await create(bus, "AFTER")
                await committed
        finally:
            bus.close()
            await engine.dispose()


async def test_a_follower_applies_the_feed_positions_and_keys(
    engine: AsyncEngine, bus: CommandBus, db: Db
) -> None:
    """The relay in one process, a follower in another: a watcher of the changed document
    wakes, a watcher of another does not, and minVersion waits end."""
    relay_progress = Progress()
    feed = ProgressFeed(engine)
    relay = Relay(engine, db, [ProductsProjection()], relay_progress, feed=feed, write_chunk=32)
    await relay.setup()
    product = await create(bus)
    other = await create(bus, "OTHER")
    while await relay.run_once():
        pass
    reader = Progress()
    follower = ProgressFollower(db, reader, feed)
    await follower.start()
    assert reader.position("products") == relay.positions["products"]
    async with (
        reader.watch("products", product) as changed,
        reader.watch("products", other) as unchanged,
    ):
        outcome = await bus.execute(RestockProduct(product, quantity=1))
        await relay.run_once()
        follower.signal()
        await follower._step(poll_due=False)
        assert changed.is_set()
        assert not unchanged.is_set()
    assert await reader.wait_for("products", outcome.version, within=0) >= outcome.version


async def test_a_follower_that_missed_rows_wakes_every_watcher(engine: AsyncEngine, db: Db) -> None:
    feed = ProgressFeed(engine)
    reader = Progress()
    follower = ProgressFollower(db, reader, feed)
    await follower.start()
    await feed.publish(0, [Advance("products", 1, frozenset({"a"}))])
    await feed.publish(0, [Advance("products", 2, frozenset({"a"}))])
    async with engine.begin() as conn:  # a row lost to this reader (pruned, or out of order)
        await conn.execute(
            relay_progress.delete().where(relay_progress.c.id == follower.last_id + 1)
        )
    async with reader.watch("products", "b") as elsewhere:
        await follower.catch_up()
        assert elsewhere.is_set()
    assert reader.position("products") == 2


async def test_a_new_tenure_in_the_feed_reads_the_checkpoints_first(
    engine: AsyncEngine, db: Db
) -> None:
    """A rebuild switches collections under a new epoch: the follower must take the switch
    before it advances, so a reader at the new position reads the new collections."""
    feed = ProgressFeed(engine)
    follower = ProgressFollower(db, Progress(), feed)
    await follower.start()
    await db[checkpoints.COLLECTION].insert_one(
        {"_id": "products", "position": 5, "epoch": 4, "collections": {"products": "products__g1"}}
    )
    await feed.publish(4, [Advance("products", 6, frozenset())])
    seen_epoch = follower.epoch
    await follower.catch_up()
    assert seen_epoch < 4 == follower.epoch
    assert follower.progress.position("products") == 6


async def test_the_safety_poll_happens_however_often_signals_come(
    engine: AsyncEngine, db: Db
) -> None:
    """On SQLite every commit of any process signals; a switch that no feed row tells of
    (a rebuild's, with no events after it) must still be read within the interval."""
    follower = ProgressFollower(db, Progress(), ProgressFeed(engine), safety_interval=0.3)
    await follower.start()
    running = asyncio.create_task(follower.run())

    async def signalling() -> None:
        while True:
            follower.signal()
            await asyncio.sleep(0.01)

    noise = asyncio.create_task(signalling())
    try:
        await db[checkpoints.COLLECTION].insert_one({"_id": "products", "position": 9, "epoch": 2})

        async def read() -> bool:
            return follower.progress.position("products") == 9

        await eventually(read, within=5)
    finally:
        for task in (noise, running):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_a_resume_request_reaches_the_relays_listening_on_postgresql(
    engine: AsyncEngine,
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no channel for it: the caller's own relay is told directly")
    other = create_engine(engine.url.render_as_string(hide_password=False))
    resumed = Counter()
    signals = WriteStoreSignals(other, on_outbox=Counter(), on_progress=Counter(),
                                on_resume=resumed)  # fmt: skip
    task = asyncio.create_task(signals.run())
    try:
        async with asyncio.timeout(WITHIN):
            await signals.connected.wait()
        asked = asyncio.create_task(resumed.next())
        await request_resume(engine)
        await asked
        assert resumed.calls == 1  # only when asked: connecting calls the other two
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await other.dispose()
