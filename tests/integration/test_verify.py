"""Verify on real stores: its in-memory model equals the store, write for write; it finds
what is wrong, in the store and in the write model; and a relay that moves on while it
reads, or a batch cut short, is no difference."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError
from sqlalchemy.ext.asyncio import AsyncEngine

from domain import outbox
from domain.commands import (
    AddressData,
    CancelOrder,
    ChangeProductPrice,
    DiscontinueProduct,
    RenameCustomer,
    RestockProduct,
    ShipOrder,
    UpdateCustomerAddress,
    UpdateProduct,
)
from domain.events import RecordedEvent
from domain.model import outbox as outbox_table
from domain.model import products
from domain.store import create_engine, create_schema
from projections import checkpoints
from projections.inmemory import MemoryStore
from projections.projection import Projection
from projections.rebuild import rebuild
from projections.registry import all_projections
from projections.relay import DUPLICATE_KEY, ProjectionsFailed, apply_writes, prepare_collections
from projections.verify import Verification, VerifyFailed, differences, verify
from tests.integration.shop import Shop, snapshot

Db = AsyncDatabase[dict[str, Any]]
ELSEWHERE = AddressData(line1="Side St 2", city="Hamburg", postal_code="20095", country="DE")


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """The write store where which one it is does not matter: the read side is under test."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'write.db'}")
    await create_schema(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


async def business(shop: Shop) -> dict[str, str]:
    """Every kind of event, orders over two history buckets, a rename after them."""
    mug, tee = await shop.product("MUG", stock=100), await shop.product("TEE", stock=20)
    cap = await shop.product("CAP", stock=5)
    ada, bob = await shop.customer("Ada"), await shop.customer("Bob")
    placed = [await shop.order(ada, (mug, 1), (tee if n % 4 else cap, 1)) for n in range(18)]
    await shop.order(bob, (mug, 2))
    await shop.do(ShipOrder(placed[0], "T-1"))
    await shop.do(CancelOrder(placed[1], "changed my mind"))
    await shop.do(RestockProduct(tee, 10))
    await shop.do(ChangeProductPrice(mug, 1999))
    await shop.do(UpdateProduct(tee, name="Tee shirt", description="cotton"))
    await shop.do(DiscontinueProduct(cap))
    await shop.do(RenameCustomer(ada, "Ada L."))
    await shop.do(UpdateCustomerAddress(bob, ELSEWHERE))
    last = await shop.order(ada, (mug, 3))
    await shop.do(CancelOrder(last, "again"))
    return {"mug": mug, "tee": tee, "cap": cap, "ada": ada, "bob": bob, "order": placed[2]}


async def events(engine: AsyncEngine) -> list[RecordedEvent]:
    async with engine.connect() as conn:
        return await outbox.read_after(conn, 0, 100_000)


def replayed(stream: list[RecordedEvent], projections: list[Projection]) -> MemoryStore:
    memory = MemoryStore()
    for projection in projections:
        memory.seed(projection)
    for event in stream:
        for projection in projections:
            for write in projection.project(event):
                memory.apply(write)
    return memory


def assert_identical(stored: dict[str, list[dict[str, Any]]], memory: MemoryStore) -> None:
    """Every collection holds the same documents, equal value for value and kind for kind."""
    for collection, documents in stored.items():
        by_id = {d["_id"]: d for d in documents}
        expected = memory.collection(collection)
        assert set(by_id) == set(expected), collection
        for key, document in by_id.items():
            assert differences(document, expected[key]) == [], (collection, key)
    assert sum(len(d) for d in stored.values()) > 50


@pytest.mark.usefixtures("guard_mode")
async def test_the_model_holds_what_the_relay_writes_to_the_store(
    sqlite_engine: AsyncEngine, db: Db
) -> None:
    shop = Shop(sqlite_engine, db)
    shop.relay.batch_size = 7  # batches cut runs of one document's updates: merged and not
    await business(shop)
    await shop.sync()
    assert_identical(await snapshot(db), replayed(await events(sqlite_engine), all_projections()))


async def test_the_model_holds_what_each_write_on_its_own_does_to_the_store(
    sqlite_engine: AsyncEngine, db: Db
) -> None:
    """Write by write, unmerged, as plain PyMongo sends them (guards in the filters)."""
    shop = Shop(sqlite_engine, db)
    await business(shop)
    stream = await events(sqlite_engine)
    for projection in all_projections():
        await prepare_collections(db, projection)
    for event in stream:
        for projection in all_projections():
            for write in projection.project(event):
                try:
                    await db[write.collection].bulk_write([write.operation])
                except BulkWriteError as error:
                    if error.details["writeErrors"][0]["code"] != DUPLICATE_KEY:
                        raise
    assert_identical(await snapshot(db), replayed(stream, all_projections()))


def assert_clean(result: Verification) -> None:
    assert [str(d) for d in result.differences] == []
    assert result.documents > 50


async def test_a_consistent_shop_verifies_clean_and_each_corruption_is_named(
    engine: AsyncEngine, db: Db
) -> None:
    shop = Shop(engine, db)
    ids = await business(shop)
    await shop.sync()
    result = await verify(engine, db, all_projections())
    assert_clean(result)
    assert result.write_model_head == shop.relay.head
    assert set(result.positions.values()) == {shop.relay.head}

    mug = await db["products"].find_one({"_id": ids["mug"]})
    assert mug is not None
    await db["products"].update_one({"_id": ids["mug"]}, {"$inc": {"stockOnHand": 1}})
    await db["orders"].delete_one({"_id": ids["order"]})
    await db["customers"].insert_one({"_id": "stray", "name": "Nobody", "version": 1})
    await db["dashboard_stock"].update_one({"_id": ids["tee"]}, {"$set": {"version": 10**6}})
    async with engine.begin() as conn:
        await conn.execute(sa.update(products).where(products.c.id == ids["cap"])
                           .values(price_cents=1))  # fmt: skip
    found = {str(d) for d in (await verify(engine, db, all_projections())).differences}
    head = shop.relay.head
    assert found == {
        f"products/{ids['mug']}: stockOnHand {mug['stockOnHand'] + 1} != {mug['stockOnHand']}",
        f"orders/{ids['order']}: missing in the store",
        "customers/stray: extra in the store",
        f"dashboard_stock/{ids['tee']}: version 1000000 is newer than any batch a relay has "
        f"started (checkpoint {head}, announced up to {head})",
        f"write model: products/{ids['cap']}: priceCents 1000 != 1",
    }

    only = await verify(engine, db, [p for p in all_projections() if p.name == "customers"])
    assert [str(d) for d in only.differences] == ["customers/stray: extra in the store"]
    assert set(only.positions) == {"customers"}


async def test_after_a_rebuild_the_collections_it_switched_to_are_verified(
    sqlite_engine: AsyncEngine, db: Db
) -> None:
    shop = Shop(sqlite_engine, db)
    ids = await business(shop)
    await shop.sync()
    await rebuild(sqlite_engine, db, all_projections(), grace=0)
    assert_clean(await verify(sqlite_engine, db, all_projections()))
    served = (await checkpoints.load_all(db))["products"].collections["products"]
    await db[served].update_one({"_id": ids["tee"]}, {"$set": {"name": "Hacked"}})
    [difference] = (await verify(sqlite_engine, db, all_projections())).differences
    assert str(difference) == f"products/{ids['tee']}: name 'Hacked' != 'Tee shirt'"


async def write_part_of_a_batch(engine: AsyncEngine, db: Db, announce: bool) -> None:
    """What a relay that died in the middle of a batch leaves: the batch announced (or,
    with ``announce`` False, not: as no relay does), some of its writes landed, the
    checkpoints not moved."""
    stream = [e for e in await events(engine) if e.position > min(await positions(db))]
    for projection in all_projections():
        writes = [w for e in stream for w in projection.project(e)]
        if announce:
            await checkpoints.announce(db, {projection.name: stream[-1].position})
        # The shells go first (projection.coalesce): a new history bucket's lands alone;
        # of the other projections, all writes but the last.
        shells = [w for w in writes if w.shell]
        await apply_writes(db, shells or writes[:-1], 16)


async def positions(db: Db) -> list[int]:
    return [c.position for c in (await checkpoints.load_all(db)).values()]


async def test_documents_of_a_batch_cut_short_are_no_difference_but_unannounced_ones_are(
    sqlite_engine: AsyncEngine, db: Db
) -> None:
    shop = Shop(sqlite_engine, db)
    ids = await business(shop)
    await shop.sync()
    carol = await shop.customer("Carol")
    await shop.order(carol, (ids["mug"], 1))  # her first bucket: a shell, then its update
    await shop.do(RestockProduct(ids["mug"], 5))
    await shop.do(RenameCustomer(ids["ada"], "Ada K."))
    await write_part_of_a_batch(sqlite_engine, db, announce=True)
    shells = await db["order_history_pages"].count_documents({"version": 0})
    assert shells == 1  # the case of step 4 in projections.verify is really here
    assert_clean(await verify(sqlite_engine, db, all_projections(), write_model=False))
    assert_clean(await verify(sqlite_engine, db, all_projections()))


async def test_documents_no_relay_can_have_written_are_differences(
    sqlite_engine: AsyncEngine, db: Db
) -> None:
    shop = Shop(sqlite_engine, db)
    ids = await business(shop)
    await shop.sync()
    carol = await shop.customer("Carol")
    await shop.order(carol, (ids["mug"], 1))
    await write_part_of_a_batch(sqlite_engine, db, announce=False)
    found = [str(d) for d in (await verify(sqlite_engine, db, all_projections())).differences]
    assert f"order_history_pages/{carol}:0: extra in the store" in found
    assert any("is newer than any batch a relay has started" in d for d in found)


@pytest.mark.usefixtures("guard_mode")
async def test_verify_beside_a_running_relay_and_live_writes_finds_no_difference(
    sqlite_engine: AsyncEngine, db: Db
) -> None:
    shop = Shop(sqlite_engine, db)
    shop.relay.batch_size = 5
    ids = await business(shop)
    await shop.sync()
    shop.bus.on_commit(shop.relay.wake)
    running = asyncio.create_task(shop.relay.run())
    results: list[Verification] = []

    async def more_business() -> None:
        """Twelve rounds of writes, and on until verify has finished twice meanwhile."""
        n = 0
        while n < 12 or len(results) < 2:
            customer = await shop.customer(f"C{n}")
            await shop.order(customer, (ids["mug"], 1), (ids["tee"], 1))
            await shop.order(ids["ada"], (ids["mug"], 1))
            await shop.do(RenameCustomer(ids["ada"], f"Ada {n}"))
            await shop.do(RestockProduct(ids["tee"], 2))
            await shop.do(RestockProduct(ids["mug"], 2))
            n += 1

    try:
        writes = asyncio.create_task(more_business())
        while not writes.done():
            results.append(await verify(sqlite_engine, db, all_projections(), batch_size=50))
        await writes
        assert not running.done(), running
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert len(results) >= 2
    for result in results:
        assert [str(d) for d in result.differences] == []
    # the relay did move documents on while verify read them (steps 3 and 4 ran)
    assert sum(r.moved_on for r in results) > 0


async def test_a_projection_no_relay_has_run_yet_is_missing_only_its_seed(
    sqlite_engine: AsyncEngine, db: Db
) -> None:
    shop = Shop(sqlite_engine, db)
    await shop.product("MUG")
    dashboard = [p for p in all_projections() if p.name == "dashboard"]
    result = await verify(sqlite_engine, db, dashboard, write_model=False)
    assert [str(d) for d in result.differences] == ["dashboard/dashboard: missing in the store"]


async def test_collections_a_rebuild_switches_while_they_are_read_are_verified_again(
    sqlite_engine: AsyncEngine, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify read the checkpoints before the switch, the collections after the drop."""
    shop = Shop(sqlite_engine, db)
    await business(shop)
    await shop.sync()
    before = await checkpoints.load_all(db)
    await rebuild(sqlite_engine, db, all_projections(), grace=0)
    loads: list[int] = []

    async def stale_first(database: Db) -> dict[str, checkpoints.Checkpoint]:
        loads.append(1)
        return before if len(loads) == 1 else await real_load_all(database)

    real_load_all = checkpoints.load_all
    monkeypatch.setattr(checkpoints, "load_all", stale_first)
    assert_clean(await verify(sqlite_engine, db, all_projections()))
    assert len(loads) == 4  # before and after reading the store, twice


async def test_collections_switched_under_every_attempt_end_verify_unverified(
    sqlite_engine: AsyncEngine, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    shop = Shop(sqlite_engine, db)
    await business(shop)
    await shop.sync()
    await rebuild(sqlite_engine, db, all_projections()[:1], grace=0)
    switched = await checkpoints.load_all(db)
    unswitched = {name: replace(c, collections={}) for name, c in switched.items()}
    answers = itertools.cycle([unswitched, switched])

    async def flipping(_database: Db) -> dict[str, checkpoints.Checkpoint]:
        return next(answers)

    monkeypatch.setattr(checkpoints, "load_all", flipping)
    with pytest.raises(VerifyFailed, match="rebuilds kept switching products while"):
        await verify(sqlite_engine, db, all_projections())


async def test_an_event_a_projector_cannot_take_ends_verify_unverified(
    sqlite_engine: AsyncEngine, db: Db
) -> None:
    """The relay stalls on it; verify says it cannot verify past it (the CLI's exit 3)
    rather than crashing or passing."""
    shop = Shop(sqlite_engine, db)
    await shop.product("MUG")
    async with sqlite_engine.begin() as conn:
        await conn.execute(outbox_table.insert().values(
            event_id=str(uuid.uuid4()), type="OrderPlaced", aggregate_type="Order",
            aggregate_id="o-1", aggregate_version=1, data={}, metadata={},
            occurred_at=datetime.now(UTC),
        ))  # fmt: skip
    with pytest.raises(ProjectionsFailed):
        await shop.sync()
    with pytest.raises(VerifyFailed, match="cannot project event"):
        await verify(sqlite_engine, db, all_projections())
