"""The relay on real stores: SQLite outbox in, FerretDB (or MongoDB) documents out."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.bus import CommandBus
from domain.commands import (
    ChangeProductPrice,
    CreateProduct,
    DiscontinueProduct,
    RestockProduct,
    UpdateProduct,
)
from domain.events import RecordedEvent
from projections import checkpoints
from projections import lease as lease_module
from projections import relay as relay_module
from projections.lease import Lease
from projections.products import ProductsProjection
from projections.progress import Progress
from projections.registry import all_projections
from projections.relay import Relay
from tests.conftest import eventually
from tests.integration.test_relay_faults import lapse

Db = AsyncDatabase[dict[str, Any]]

pytestmark = pytest.mark.usefixtures("guard_mode")


def make_relay(engine: AsyncEngine, db: Db, **options: Any) -> Relay:
    options.setdefault("write_chunk", 32)
    return Relay(engine, db, [ProductsProjection()], Progress(), **options)


async def create(bus: CommandBus, sku: str = "MUG-1", stock: int = 5) -> str:
    outcome = await bus.execute(
        CreateProduct(
            sku=sku, name="Mug", category="kitchen", price_cents=1299, initial_stock=stock
        )
    )
    assert outcome.id is not None
    return outcome.id


async def documents(db: Db) -> list[dict[str, Any]]:
    return await db.products.find({}).sort("_id").to_list()


async def test_every_product_event_reaches_the_document(
    bus: CommandBus, engine: AsyncEngine, db: Db
) -> None:
    pid = await create(bus)
    await bus.execute(UpdateProduct(pid, name="Red Mug", description="glazed"))
    await bus.execute(ChangeProductPrice(pid, 1500))
    await bus.execute(RestockProduct(pid, 4))
    await bus.execute(DiscontinueProduct(pid))
    relay = make_relay(engine, db)
    await relay.setup()
    assert await relay.run_once() == 5
    [doc] = await documents(db)
    assert {k: doc[k] for k in ("name", "nameKey", "description", "priceCents", "status")} == {
        "name": "Red Mug",
        "nameKey": "red mug",
        "description": "glazed",
        "priceCents": 1500,
        "status": "DISCONTINUED",
    }
    assert (doc["stockOnHand"], doc["stockAvailable"], doc["version"]) == (9, 9, 5)
    assert (await checkpoints.load_all(db))["products"].position == 5
    assert relay.progress.position("products") == 5


async def test_replaying_a_batch_changes_nothing(
    bus: CommandBus, engine: AsyncEngine, db: Db
) -> None:
    pid = await create(bus)
    await bus.execute(RestockProduct(pid, 3))
    await bus.execute(ChangeProductPrice(pid, 999))
    relay = make_relay(engine, db)
    await relay.setup()
    await relay.run_once()
    before = await documents(db)
    relay.positions["products"] = 0  # as if the checkpoint had been lost
    assert await relay.run_once() == 3
    assert await documents(db) == before


async def test_an_older_event_after_a_newer_one_changes_nothing(
    bus: CommandBus, engine: AsyncEngine, db: Db
) -> None:
    pid = await create(bus)
    await bus.execute(ChangeProductPrice(pid, 1000))
    await bus.execute(ChangeProductPrice(pid, 2000))
    relay = make_relay(engine, db)
    await relay.setup()
    await relay.run_once()
    from domain import outbox

    async with engine.connect() as conn:
        events = await outbox.read_after(conn, 0, 10)
    older: list[RecordedEvent] = [events[1]]  # the price change to 1000
    await relay.apply(ProductsProjection(), older)
    [doc] = await documents(db)
    assert (doc["priceCents"], doc["version"]) == (2000, 3)


class Crash(Exception):
    pass


class CrashingRelay(Relay):
    """Dies after its Mongo writes and before its checkpoint, like a killed process."""

    async def save_checkpoint(self, name: str, position: int) -> None:
        raise Crash


async def test_relay_killed_before_its_checkpoint_leaves_no_double_effect(
    bus: CommandBus, engine: AsyncEngine, db: Db
) -> None:
    pid = await create(bus, stock=0)
    for _ in range(3):
        await bus.execute(RestockProduct(pid, 2))
    crashing = CrashingRelay(engine, db, [ProductsProjection()], Progress(), write_chunk=32)
    await crashing.setup()
    with pytest.raises(relay_module.ProjectionsFailed):
        await crashing.run_once()
    [written] = await documents(db)
    assert written["stockOnHand"] == 6  # the writes landed, the checkpoint did not
    assert (await checkpoints.load_all(db))["products"].position == 0

    restarted = make_relay(engine, db)
    await restarted.setup()
    assert await restarted.run_once() == 4
    [doc] = await documents(db)
    assert (doc["stockOnHand"], doc["stockAvailable"], doc["version"]) == (6, 6, 4)


async def test_a_batch_cut_half_way_is_replayed_event_by_event(
    bus: CommandBus, engine: AsyncEngine, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relay dies after two of a product's four restocks reached Mongo. Its successor,
    reading smaller batches, must not merge those restocks (the merged update would be
    skipped whole by the document's version) but replay them one by one."""
    pid = await create(bus, stock=0)
    for _ in range(4):
        await bus.execute(RestockProduct(pid, 2))
    await checkpoints.announce(db, {"products": 1})  # a crash before: no merging at 1
    real_apply = relay_module.apply_writes

    async def dies_after_three(
        db_: Any, writes: list[Any], chunk: int, suffix: str = "", **options: Any
    ) -> None:
        for write in writes[:3]:
            await real_apply(db_, [write], 1, suffix, **options)
        raise Crash

    dying = make_relay(engine, db)
    await dying.setup()
    monkeypatch.setattr(relay_module, "apply_writes", dies_after_three)
    with pytest.raises(relay_module.ProjectionsFailed):
        await dying.run_once()
    monkeypatch.setattr(relay_module, "apply_writes", real_apply)
    [cut] = await documents(db)
    assert (cut["stockOnHand"], cut["version"]) == (4, 3)

    successor = make_relay(engine, db, batch_size=2)
    await successor.setup()
    while await successor.run_once():
        pass
    [doc] = await documents(db)
    assert (doc["stockOnHand"], doc["stockAvailable"], doc["version"]) == (8, 8, 5)


async def test_a_failed_batch_is_retried_against_the_documents_not_remembered_versions(
    bus: CommandBus, engine: AsyncEngine, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first of two restocks reaches Mongo, the second fails: the retry must see
    that the first landed, whatever versions the relay remembered from before."""
    first, second = await create(bus, "MUG-1", stock=0), await create(bus, "MUG-2", stock=0)
    for product in (first, second):
        await bus.execute(RestockProduct(product, 1))
    relay = make_relay(engine, db, write_chunk=1)
    await relay.setup()
    await relay.run_once()  # versions 3 and 4: known to a relay that checks them itself
    await bus.execute(RestockProduct(first, 2))
    await bus.execute(RestockProduct(second, 3))
    real_send = relay_module._send

    async def first_only(collection: Any, operations: list[Any], *args: Any) -> None:
        await real_send(collection, operations[:1], *args)
        raise Crash

    monkeypatch.setattr(relay_module, "_send", first_only)
    with pytest.raises(relay_module.ProjectionsFailed):
        await relay.run_once()
    monkeypatch.setattr(relay_module, "_send", real_send)
    assert await eventually(relay.run_once) == 2  # once the projection's back-off is over
    stock = {d["_id"]: (d["stockOnHand"], d["version"]) for d in await documents(db)}
    assert stock == {first: (3, 5), second: (4, 6)}


async def test_a_restarted_relay_resumes_from_its_checkpoint(
    bus: CommandBus, engine: AsyncEngine, db: Db
) -> None:
    pid = await create(bus)
    first = make_relay(engine, db)
    await first.setup()
    assert await first.run_once() == 1
    await bus.execute(RestockProduct(pid, 1))
    await bus.execute(RestockProduct(pid, 1))
    second = make_relay(engine, db)
    await second.setup()
    assert second.positions == {"products": 1}
    assert await second.run_once() == 2
    [doc] = await documents(db)
    assert doc["stockOnHand"] == 7


async def test_a_batch_larger_than_one_bulk_write_is_applied_whole(
    bus: CommandBus, engine: AsyncEngine, db: Db
) -> None:
    pid = await create(bus, stock=0)
    for _ in range(150):
        await bus.execute(RestockProduct(pid, 1))
    relay = make_relay(engine, db, batch_size=500)
    await relay.setup()
    assert await relay.run_once() == 151
    [doc] = await documents(db)
    assert (doc["stockOnHand"], doc["version"]) == (150, 151)


async def test_a_commit_wakes_the_running_relay_at_once(
    bus: CommandBus, engine: AsyncEngine, db: Db
) -> None:
    # With an hour between polls, only the commit's wake-up can bring the event over.
    relay = make_relay(engine, db, poll_interval=3600)
    bus.on_commit(relay.wake)
    task = asyncio.create_task(relay.run())
    try:
        await relay.progress.wait_for("products", 0, within=10)
        outcome = await bus.execute(CreateProduct(sku="A", name="A", category="c", price_cents=1))
        assert outcome.version is not None
        assert await relay.progress.wait_for("products", outcome.version, within=10) >= 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_only_one_relay_holds_the_lease(engine: AsyncEngine, db: Db) -> None:
    first, second = Lease(engine, db, ttl=30), Lease(engine, db, ttl=30)
    assert await first.acquire()
    assert not await second.acquire()
    assert await first.acquire()  # renewal: the same tenure
    assert first.epoch == 1
    await first.release()
    assert await second.acquire()
    assert second.epoch == 2  # a new tenure, a new epoch


async def test_a_relay_keeps_its_bulk_writes_in_flight_within_its_limit(
    bus: CommandBus, engine: AsyncEngine, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FerretDB deadlocks when concurrent bulk updates hold its 100 SQLite connections;
    the projections run side by side, but one bulk write at a time goes out."""
    in_flight, most = 0, 0
    real_bulk_write = AsyncCollection.bulk_write

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            return await real_bulk_write(self, *args, **kwargs)
        finally:
            in_flight -= 1

    monkeypatch.setattr(AsyncCollection, "bulk_write", counted)
    products = [await create(bus, f"SKU-{n}", stock=5) for n in range(40)]
    for product in products:
        await bus.execute(RestockProduct(product, 1))
    relay = Relay(engine, db, all_projections(), Progress(), write_chunk=4, concurrent_writes=1)
    await relay.setup()
    assert await relay.run_once() == 80
    assert most == 1


async def test_a_running_relay_stops_writing_once_another_took_its_lease(
    bus: CommandBus, engine: AsyncEngine, db: Db
) -> None:
    """Its lease ran out during a (long) batch and another relay took it: the next
    bulk write finds out, and nothing more is written."""
    await create(bus)
    mine = Lease(engine, db, ttl=60)
    relay = Relay(engine, db, [ProductsProjection()], Progress(), write_chunk=32, lease=mine)
    await relay.setup()
    assert await mine.acquire()
    assert mine.epoch is not None
    await relay.begin_tenure(mine.epoch)  # as inside run(), which holds the lease
    await lapse(mine)  # it stalls past its lease...
    other = Lease(engine, db)
    assert await other.acquire()  # ...and another relay takes it over
    with pytest.raises(relay_module.LeaseLost):
        await relay.run_once()
    assert await documents(db) == []


async def test_a_running_relay_renews_its_lease_mid_batch_and_goes_on(
    bus: CommandBus, engine: AsyncEngine, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create(bus)
    mine = Lease(engine, db, ttl=5)
    relay = Relay(engine, db, [ProductsProjection()], Progress(), write_chunk=32, lease=mine)
    await relay.setup()
    assert await mine.acquire()
    assert mine.epoch is not None
    await relay.begin_tenure(mine.epoch)
    relay.write_gate.margin = 10  # more than the lease's 5 s: every write renews it
    renewals: list[bool] = []
    real_renew = mine.renew

    async def counted() -> bool:
        renewals.append(await real_renew())
        return renewals[-1]

    monkeypatch.setattr(mine, "renew", counted)
    assert await relay.run_once() == 1
    assert len(await documents(db)) == 1
    after = await db[lease_module.COLLECTION].find_one({"_id": "relay"})
    assert after is not None
    assert (after["owner"], after["epoch"]) == (mine.owner, 1)
    assert renewals == [True, True]  # before its bulk write, before its checkpoint


async def test_a_relay_checking_versions_reads_only_those_it_does_not_know(
    bus: CommandBus, engine: AsyncEngine, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = await create(bus)
    await bus.execute(RestockProduct(pid, 1))
    relay = make_relay(engine, db, check_versions=True)
    await relay.setup()
    await relay.run_once()  # created, then restocked: the version it left is known
    reads: list[Any] = []
    real_find_one = AsyncCollection.find_one

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(args[0] if args else kwargs.get("filter"))
        return await real_find_one(self, *args, **kwargs)

    monkeypatch.setattr(AsyncCollection, "find_one", counted)
    await bus.execute(RestockProduct(pid, 2))
    assert await relay.run_once() == 1
    assert reads == []
    [doc] = await documents(db)
    assert (doc["stockOnHand"], doc["version"]) == (8, 3)
