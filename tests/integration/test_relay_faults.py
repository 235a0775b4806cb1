"""The relay under faults: retried batches, lost leases, handovers, rebuilds that die.

Each test here reproduces a finding of an outside review (issue 8) that lost or
doubled events; each runs with both ways of applying version guards.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.bus import CommandBus
from domain.commands import CreateProduct, RestockProduct
from domain.events import RecordedEvent
from projections import checkpoints
from projections import lease as lease_module
from projections import rebuild as rebuild_module
from projections.lease import Lease
from projections.products import ProductsProjection, find_product
from projections.progress import Progress
from projections.projection import Write
from projections.rebuild import REBUILD_LEASE, RebuildRunning, rebuild
from projections.registry import all_projections
from projections.relay import LeaseLost, ProjectionsFailed, Relay
from projections.tables import relay_leases
from tests.conftest import eventually
from tests.integration.shop import Shop, serving, snapshot

Db = AsyncDatabase[dict[str, Any]]

pytestmark = pytest.mark.usefixtures("guard_mode")


class Crash(Exception):
    pass


def make_relay(engine: AsyncEngine, db: Db, **options: Any) -> Relay:
    options.setdefault("write_chunk", 32)
    return Relay(engine, db, [ProductsProjection()], Progress(), **options)


async def create(bus: CommandBus, sku: str = "MUG-1", stock: int = 0) -> str:
    outcome = await bus.execute(
        CreateProduct(sku=sku, name="Mug", category="c", price_cents=100, initial_stock=stock)
    )
    assert outcome.id is not None
    return outcome.id


async def stock_of(db: Db, product_id: str) -> tuple[int, int]:
    document = await find_product(db, product_id)
    assert document is not None
    return document["stockOnHand"], document["version"]


async def lapse(lease: Lease) -> None:
    """As if its holder stalled past the lease: expired by the store's clock and by its own."""
    async with lease.engine.begin() as conn:
        await conn.execute(
            relay_leases.update().where(relay_leases.c.name == lease.name).values(expires_at=0)
        )
    lease._held_until = 0.0  # its own monotonic clock has moved on as far


async def leader_and_standby(engine: AsyncEngine, db: Db) -> tuple[Relay, Relay]:
    """Two relays (two processes): the first holds the lease and has applied the outbox."""
    a, b = make_relay(engine, db), make_relay(engine, db)
    await a.setup()
    await b.setup()
    assert await a.step() is not None  # takes the lease, starts a tenure, applies
    return a, b


@pytest.mark.parametrize("retried_by", ["the same relay", "a restarted relay"])
async def test_a_retried_batch_does_not_merge_over_events_its_first_attempt_wrote(
    bus: CommandBus,
    engine: AsyncEngine,
    db: Db,
    monkeypatch: pytest.MonkeyPatch,
    retried_by: str,
) -> None:
    """[restock +2] is written but its checkpoint is not; +3 commits; the retry reads
    both. Merged into one update guarded by the first, it would be skipped whole by
    the document (already at the first) and +3 lost."""
    pid = await create(bus)
    relay = make_relay(engine, db)
    await relay.setup()
    await relay.run_once()
    await bus.execute(RestockProduct(pid, 2))

    async def dies(name: str, position: int) -> None:
        raise Crash

    monkeypatch.setattr(relay, "save_checkpoint", dies)
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the relay makes of it
        await relay.run_once()
    monkeypatch.undo()
    assert await stock_of(db, pid) == (2, 2)  # written, not checkpointed
    await bus.execute(RestockProduct(pid, 3))

    retry = relay if retried_by == "the same relay" else make_relay(engine, db)
    if retry is not relay:
        await retry.setup()
    assert await eventually(retry.run_once) == 2
    assert await stock_of(db, pid) == (5, 3)


async def test_one_projection_failing_neither_cuts_nor_holds_up_the_others(
    bus: CommandBus, engine: AsyncEngine, db: Db
) -> None:
    pid = await create(bus)
    for _ in range(20):
        await bus.execute(RestockProduct(pid, 1))

    class Broken:
        name = "broken"
        indexes: dict[str, Any] = {"broken": []}

        def project(self, event: RecordedEvent) -> list[Write]:
            raise Crash("a projector bug")

    relay = Relay(
        engine, db, [ProductsProjection(), Broken()], Progress(), write_chunk=1, batch_size=10
    )
    await relay.setup()
    with pytest.raises(ProjectionsFailed) as failed:
        await relay.run_once()
    assert set(failed.value.failures) == {"broken"}
    assert relay.positions["products"] == 10  # every write of its part, and its checkpoint
    assert (await checkpoints.load_all(db))["products"].position == 10
    assert await relay.run_once() == 10  # the broken one backs off; products goes on
    assert relay.positions == {"products": 20, "broken": 0}
    assert await stock_of(db, pid) == (19, 20)
    assert "a projector bug" in ((await checkpoints.load_all(db))["broken"].last_error or "")


async def test_a_relay_whose_lease_lapsed_can_write_nothing_and_reloads_on_its_next_tenure(
    bus: CommandBus, engine: AsyncEngine, db: Db
) -> None:
    """A stalls past its lease; B takes over, applies, releases; A resumes. Before,
    A's lease came back as a renewal and A wrote from its stale positions and
    remembered versions (applying B's events twice)."""
    pid = await create(bus)
    a, b = await leader_and_standby(engine, db)
    await bus.execute(RestockProduct(pid, 10))
    await lapse(a.lease)

    assert await b.lease.acquire()
    assert b.lease.epoch == a.lease.epoch + 1
    await b.begin_tenure(b.lease.epoch)
    assert await b.run_once() == 1
    assert await stock_of(db, pid) == (10, 2)

    # A wakes up mid-flight, still in its old tenure: fenced, it writes nothing.
    await bus.execute(RestockProduct(pid, 100))
    with pytest.raises(LeaseLost):
        await a.run_once()
    with pytest.raises(checkpoints.Fenced):
        await checkpoints.save(db, "products", 99, 99, a.epoch)
    assert await stock_of(db, pid) == (10, 2)

    await b.lease.release()
    running = asyncio.create_task(a.run())
    try:
        await a.progress.wait_for("products", 3, within=10)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert a.epoch == b.lease.epoch + 1  # a new tenure, everything reloaded
    assert await stock_of(db, pid) == (110, 3)


async def test_a_handover_asked_for_by_a_rebuild_that_died_expires(
    engine: AsyncEngine, db: Db
) -> None:
    holder = Lease(engine, db)
    assert await holder.acquire()
    dead = Lease(engine, db, ttl=60)
    await dead.request_handover()  # and is never heard of again
    assert not await holder.acquire()  # gives the lease up for the handover
    relay = Lease(engine, db)
    assert not await relay.acquire()  # nobody but the requester may take it meanwhile
    await store_clock_passes(engine, 61)  # the request's ttl, by the store's clock
    assert await relay.acquire()


async def store_clock_passes(engine: AsyncEngine, seconds: float) -> None:
    """As if the write store's clock moved on ``seconds``: every lease's expiry and
    handover request are that much older."""
    async with engine.begin() as conn:
        await conn.execute(
            relay_leases.update().values(
                expires_at=relay_leases.c.expires_at - seconds,
                handover_until=relay_leases.c.handover_until - seconds,
            )
        )


async def test_a_lease_expires_by_the_stores_clock_not_the_callers(
    engine: AsyncEngine, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder = Lease(engine, db, ttl=60)
    assert await holder.acquire()
    # A machine whose wall clock runs a day ahead cannot take it.
    real_time, real_datetime = time.time, lease_module.datetime

    class Ahead(real_datetime):  # type: ignore[misc, valid-type]
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return real_datetime.now(tz) + timedelta(days=1)

    monkeypatch.setattr(time, "time", lambda: real_time() + 86_400)
    monkeypatch.setattr(lease_module, "datetime", Ahead)
    assert not await Lease(engine, db).acquire()
    assert await lease_module.holder_alive(db)


async def test_two_relays_racing_for_a_free_lease_never_both_get_it(
    engine: AsyncEngine, db: Db
) -> None:
    """On FerretDB an update's filter is not checked again when it replaces the
    document, so a compare-and-set there let two take one lease; the write store's is atomic."""
    for _ in range(20):
        a, b = Lease(engine, db), Lease(engine, db)
        got = await asyncio.gather(a.acquire(), b.acquire())
        assert sorted(got) == [False, True]
        await (a if got[0] else b).release()


async def test_two_rebuilds_never_run_at_once_and_a_dead_ones_lease_frees_itself(
    engine: AsyncEngine, db: Db
) -> None:
    shop = Shop(engine, db)
    await shop.product("MUG")
    other = Lease(engine, db, name=REBUILD_LEASE, ttl=60)
    assert await other.acquire()
    with pytest.raises(RebuildRunning):
        await rebuild(engine, db, all_projections(), grace=0)
    # The other rebuild dies; its lease lapses and the next rebuild runs.
    await store_clock_passes(engine, 61)
    result = await rebuild(engine, db, all_projections(), grace=0)
    assert result.position == 1


async def test_readers_never_see_a_rebuilds_switch(
    engine: AsyncEngine, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, FerretDB's drop-then-rename showed readers an empty collection: a
    product NOT_FOUND, an events read that jumped past events."""
    shop = Shop(engine, db)
    shop.relay.poll_interval = 0.05
    products = [await shop.product(f"P{n}") for n in range(5)]
    await shop.sync()
    head = shop.relay.positions["audit_trail"]
    shop.bus.on_commit(shop.relay.wake)
    running = asyncio.create_task(shop.relay.run())
    misses: list[str] = []
    done = asyncio.Event()

    async def read() -> None:
        while not done.is_set():
            for product in products:
                if await find_product(shop.db, product) is None:
                    misses.append(product)
            events = await shop.db["events"].count_documents({"_id": {"$lte": head}})
            if events != head:
                misses.append(f"{events} events")

    reader = asyncio.create_task(read())
    try:
        await rebuild(engine, db, all_projections(), grace=2)  # returns once it dropped the old
        done.set()
        await reader
    finally:
        done.set()
        running.cancel()
        await asyncio.gather(running, reader, return_exceptions=True)
    assert misses == []
    assert shop.db.serving["products"].startswith("products__g")


async def test_a_rebuild_that_dies_while_switching_leaves_every_projection_whole(
    engine: AsyncEngine, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    shop = Shop(engine, db)
    mug = await shop.product("MUG")
    await shop.order(await shop.customer(), (mug, 2))
    await shop.sync()
    live = await snapshot(db)
    real_switch = checkpoints.switch
    switched: list[str] = []

    async def dies_after_two(*args: Any, **kwargs: Any) -> None:
        if len(switched) == 2:
            raise Crash("killed while switching")
        switched.append(args[1])
        await real_switch(*args, **kwargs)

    monkeypatch.setattr(checkpoints, "switch", dies_after_two)
    with pytest.raises(Crash):
        await rebuild(engine, db, all_projections(), grace=0)
    monkeypatch.undo()
    assert await snapshot(db) == live  # two switched, the rest still the old ones
    stored = await checkpoints.load_all(db)
    assert {name for name, c in stored.items() if c.collections} == set(switched)

    await rebuild(engine, db, all_projections(), grace=0)
    assert await snapshot(db) == live
    names = set(await db.list_collection_names())
    served = await serving(db)
    generations = {n for n in names if rebuild_module.GENERATION in n}
    assert generations == {served[c].name for c in live}  # the dead rebuild's are gone
    assert not names & set(live)  # and so are those it replaced but did not drop


async def test_a_write_to_a_fenced_checkpoint_is_refused(db: Db) -> None:
    await checkpoints.fence(db, ["products"], 3)
    await checkpoints.save(db, "products", 5, 5, 3)
    await checkpoints.fence(db, ["products"], 4)
    with pytest.raises(checkpoints.Fenced):
        await checkpoints.save(db, "products", 9, 9, 3)
    with pytest.raises(checkpoints.Fenced):
        await checkpoints.announce(db, {"products": 9}, 3)
    with pytest.raises(checkpoints.Fenced):
        await checkpoints.fence(db, ["products"], 3)
    stored = (await checkpoints.load_all(db))["products"]
    assert (stored.position, stored.attempted_until, stored.epoch) == (5, 0, 4)


async def test_a_relay_paused_before_a_bulk_write_writes_nothing_once_another_took_over(
    bus: CommandBus, engine: AsyncEngine, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paused (a GC pause, a stopped VM) after deciding its writes, before sending them,
    while another relay takes over and applies the same events: once it resumes, its
    bulk write must not go out (with guards decided by the relay, it would apply the
    restock a second time)."""
    pid = await create(bus)
    a, b = await leader_and_standby(engine, db)
    await bus.execute(RestockProduct(pid, 7))
    paused, resume = asyncio.Event(), asyncio.Event()
    real_enter = type(a.write_gate).__aenter__

    async def pausing(gate: Any) -> None:
        if gate is a.write_gate and not resume.is_set():
            paused.set()
            await resume.wait()
        await real_enter(gate)

    monkeypatch.setattr(type(a.write_gate), "__aenter__", pausing)
    batch = asyncio.create_task(a.run_once())
    await paused.wait()
    await lapse(a.lease)
    assert await b.step() == 1
    resume.set()
    with pytest.raises(LeaseLost):
        await batch
    assert await stock_of(db, pid) == (7, 2)


async def test_a_relay_that_lost_its_lease_stands_by_without_its_back_offs(
    bus: CommandBus, engine: AsyncEngine, db: Db
) -> None:
    """A projection's pending retry does not make a standby relay poll without pause."""
    await create(bus)

    class Broken:
        name = "broken"
        indexes: dict[str, Any] = {"broken": []}

        def project(self, event: RecordedEvent) -> list[Write]:
            raise Crash("a projector bug")

    relay = Relay(engine, db, [ProductsProjection(), Broken()], Progress(), poll_interval=0.5)
    await relay.setup()
    with pytest.raises(ProjectionsFailed):
        await relay.step()
    await lapse(relay.lease)
    assert await Lease(engine, db).acquire()
    assert await relay.step() is None
    assert relay._standby_interval == pytest.approx(0.5)


async def test_a_tenure_moves_past_an_epoch_its_checkpoints_already_carry(
    bus: CommandBus, engine: AsyncEngine, db: Db
) -> None:
    """Checkpoints fenced by an epoch the lease no longer knows (the write store restored
    from a backup): the relay starts a new tenure instead of holding the lease, refused,
    forever."""
    await create(bus)
    relay = make_relay(engine, db)
    await relay.setup()
    await checkpoints.fence(db, ["products"], 5)
    assert await relay.step() == 1
    assert relay.epoch == relay.lease.epoch == 6
    assert (await checkpoints.load_all(db))["products"].position == 1


async def test_a_relay_cancelled_during_a_bulk_write_leaves_its_lease_to_expire(
    bus: CommandBus, engine: AsyncEngine, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write may still land: another relay must not take over at once."""
    await create(bus)
    relay = make_relay(engine, db)
    sent = asyncio.Event()
    real_bulk_write = AsyncCollection.bulk_write

    async def never_answers(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.name != "products":
            return await real_bulk_write(self, *args, **kwargs)
        sent.set()
        await asyncio.Event().wait()  # never set: the write hangs until cancelled
        return None

    monkeypatch.setattr(AsyncCollection, "bulk_write", never_answers)
    running = asyncio.create_task(relay.run())
    await asyncio.wait_for(sent.wait(), 10)
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    assert not await Lease(engine, db).acquire()


async def test_a_holder_cannot_renew_while_a_handover_is_asked_for(
    engine: AsyncEngine, db: Db
) -> None:
    """Its write gate then stops the batch, so a rebuild does not wait for its end."""
    holder, rebuild_side = Lease(engine, db), Lease(engine, db)
    assert await holder.acquire()
    await rebuild_side.request_handover()
    assert not await holder.renew()
    assert not await holder.acquire()  # gives it up
    assert await rebuild_side.acquire()


async def test_releasing_the_lease_never_waits_on_an_unreachable_read_store(
    engine: AsyncEngine, db: Db
) -> None:
    """The mirror is written outside the write store's transaction: a read store outage
    neither holds the write lock (commands go on) nor undoes the release."""
    unreachable: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        "mongodb://127.0.0.1:9", serverSelectionTimeoutMS=200
    )
    try:
        lease = Lease(engine, unreachable["shop"])
        assert await lease.acquire()  # the mirror fails quietly
        await lease.release()
        assert await Lease(engine, db).acquire()  # released in the write store
    finally:
        await unreachable.close()


async def test_a_relay_whose_lease_cannot_be_renewed_stops_saying_it_runs(
    bus: CommandBus, engine: AsyncEngine, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/readyz asks the relay whether it runs; it says no once its lease lapses."""
    relay = make_relay(engine, db, lease=Lease(engine, db, ttl=10), poll_interval=0.01)
    running = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: _true(relay.running))
        real_acquire = relay.lease.acquire

        async def write_store_down() -> bool:
            raise OperationalError("SELECT", {}, Exception("database is locked"))

        monkeypatch.setattr(relay.lease, "acquire", write_store_down)
        monkeypatch.setattr(relay.lease, "clock", lambda: time.monotonic() + 11)  # ttl passed
        await eventually(lambda: _true(not relay.running))
        monkeypatch.setattr(relay.lease, "acquire", real_acquire)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def _true(value: bool) -> bool:
    return value


async def test_a_rebuild_never_writes_into_a_generation_that_exists(
    engine: AsyncEngine, db: Db
) -> None:
    """The rebuild lease's epoch restarts with a new write store; collections of its
    number may be served already."""
    shop = Shop(engine, db)
    await shop.product("MUG")
    await db.create_collection("products__g4")
    await checkpoints.fence(db, ["products"], 1)
    await db[checkpoints.COLLECTION].update_one(
        {"_id": "products"}, {"$set": {"collections": {"products": "products__g4"}}}
    )
    await rebuild(engine, db, all_projections(), grace=0)
    served = (await checkpoints.load_all(db))["products"].collections
    assert served == {"products": "products__g5"}


async def test_a_renewal_that_outlasts_the_lease_lets_no_write_through(
    bus: CommandBus, engine: AsyncEngine, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renewal succeeded in the write store, but its read-store mirror answered
    only after the lease had run out: the gate must not send the bulk write."""
    await create(bus)
    relay = make_relay(engine, db, lease=Lease(engine, db, ttl=5))
    await relay.setup()
    assert await relay.lease.acquire()
    assert relay.lease.epoch is not None
    await relay.begin_tenure(relay.lease.epoch)
    relay.write_gate.margin = 10  # every write renews
    real_renew = relay.lease.renew

    async def slow_renew() -> bool:
        renewed = await real_renew()
        relay.lease._held_until -= 5  # as if the renewal had taken the whole lease
        return renewed

    monkeypatch.setattr(relay.lease, "renew", slow_renew)
    with pytest.raises(LeaseLost):
        await relay.run_once()
    assert await db.products.count_documents({}) == 0


async def test_a_poison_event_stalls_only_its_projection_until_the_projector_is_fixed(
    bus: CommandBus, engine: AsyncEngine, db: Db
) -> None:
    """A projector that raises on one event: its projection stops just before it, says
    why (lastError, and the failing metric), retries with back-off; the others go on.
    Once the projector is fixed, it converges."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from app.metrics import ProgressCollector
    from projections.audit import AuditTrailProjection

    pid = await create(bus)
    poison = (await bus.execute(RestockProduct(pid, 7))).version
    for _ in range(5):
        await bus.execute(RestockProduct(pid, 1))

    class Poisoned(ProductsProjection):
        broken = True

        def project(self, event: RecordedEvent) -> list[Write]:
            if self.broken and event.position == poison:
                raise Crash(f"cannot project event {event.position}")
            return super().project(event)

    products = Poisoned()
    relay = Relay(engine, db, [products, AuditTrailProjection()], Progress(), write_chunk=8)
    registry = CollectorRegistry()
    registry.register(ProgressCollector(SimpleNamespace(relay=relay, progress=relay.progress)))  # type: ignore[arg-type]
    running = asyncio.create_task(relay.run())
    try:
        head = poison + 5
        await eventually(lambda: _at(relay, "audit_trail", head))
        await eventually(lambda: _failing(registry, "products"))
        stored = await checkpoints.load_all(db)
        assert stored["products"].position == poison - 1
        assert f"cannot project event {poison}" in (stored["products"].last_error or "")
        assert stored["audit_trail"].last_error is None

        products.broken = False  # the fix (a deploy); the back-off ends on its own
        await eventually(lambda: _at(relay, "products", head), within=15)
        assert await stock_of(db, pid) == (12, head)
        assert (await checkpoints.load_all(db))["products"].last_error is None
        assert not await _failing(registry, "products")
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def _at(relay: Relay, name: str, position: int) -> bool:
    return relay.positions.get(name, 0) >= position


async def _failing(registry: Any, name: str) -> bool:
    from prometheus_client import generate_latest

    return (
        f'shop_projection_failing{{projection="{name}"}} 1.0' in generate_latest(registry).decode()
    )


async def test_a_relay_wide_failure_leaves_no_stalled_projection_once_it_is_over(
    bus: CommandBus, engine: AsyncEngine, db: Db
) -> None:
    """A failure of the whole batch (a store error) is recorded on every projection's
    checkpoint; one that is caught up saves no checkpoint until the next event, so the
    relay clears the error itself once a turn goes well."""
    await create(bus)
    relay = make_relay(engine, db)
    await relay.setup()
    assert await relay.step() == 1
    await relay._record_errors({"products": OSError("the read store went away")})
    stored = await checkpoints.load_all(db)
    assert stored["products"].last_error is not None  # STALLED in `projections`
    assert await relay.step() == 0  # caught up: nothing to apply, nothing saved
    stored = await checkpoints.load_all(db)
    assert stored["products"].last_error is None
