"""A randomised model test of the read side: whatever happens, the read models end equal
to a replay of the outbox from scratch.

Hypothesis drives commands, two relays (two processes, each with its own lease and
read database) taking turns, batches that fail before, during or after their writes
or before their checkpoint, relays that stall past their lease (also in the middle
of a batch, while the other takes over), relays that are killed and restarted, and
rebuilds (some dying half-way through their switch). Faults are armed afresh for each
step, so a batch can fail or stall at any of its writes at any point of a run.

After every step, an api process (a :class:`Reader`: its progress from the relays'
feed and the checkpoints, its reads through the served schema) checks what clients
rely on meanwhile: no checkpoint goes back; no document's version goes back; and a
query at ``minVersion`` N either answers NOT_YET_CONSISTENT or with documents that
hold every event up to N (versions from the outbox, projected). After each run the
surviving relays catch up and every read-model document must equal a fresh replay's.

Runs on the embedded stores (SQLite, FerretDB on SQLite) with both ways of applying
version guards, and on the production ones (PostgreSQL, FerretDB on PostgreSQL) with the
production's (the relay decides; see ``tests/conftest.py``). Bounded for ``make test``;
``make test-model`` (``MODEL_EXAMPLES``, ``MODEL_STEPS``) runs a longer search. Failing
examples are kept in ``.cache/hypothesis`` and replayed first by the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Awaitable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from pymongo import AsyncMongoClient

from domain import outbox
from domain.bus import CommandBus
from domain.commands import (
    AddressData,
    CancelOrder,
    ChangeProductPrice,
    Command,
    CreateProduct,
    DiscontinueProduct,
    OrderLineRequest,
    PlaceOrder,
    RegisterCustomer,
    RenameCustomer,
    RestockProduct,
    ShipOrder,
)
from domain.errors import DomainError
from domain.events import RecordedEvent
from domain.identity import ADMIN_ROLE, Principal
from domain.store import create_engine, create_schema
from projections import checkpoints
from projections.progress import Progress, ProgressFollower
from projections.readdb import ReadDatabase
from projections.rebuild import rebuild
from projections.registry import all_projections
from projections.relay import LeaseLost, ProjectionsFailed, Relay, WriteGate
from projections.signals import ProgressFeed
from schema.build import build_schema
from schema.context import Context
from schema.limits import Limits
from tests.conftest import fresh_database
from tests.integration.shop import snapshot
from tests.integration.test_relay_faults import lapse

T = TypeVar("T")
EXAMPLES = int(os.environ.get("MODEL_EXAMPLES", "4"))
STEPS = int(os.environ.get("MODEL_STEPS", "30"))
HOME = AddressData(line1="Main St 1", city="Berlin", postal_code="10115", country="DE")
FAULTS = ("none", "before writing", "while writing", "before its checkpoint")
# Failing examples, replayed first by the next run (a git-ignored folder).
EXAMPLES_DB = DirectoryBasedExampleDatabase(Path(__file__).parents[2] / ".cache" / "hypothesis")
# What the reader queries, per projection: its read model's collection and query field.
QUERIED = {"products": "product", "customers": "customer", "orders": "order"}


class Crash(Exception):
    """An injected fault."""


class FaultyGate(WriteGate):
    """The relay's write gate, which can fail or pause at its n-th bulk write (checkpoint
    moves pass it too) after being armed: counted from the arming, so a fault can hit
    any batch of a run, not only the first ones after a (re)start."""

    def __init__(self, gate: WriteGate) -> None:
        self.__dict__.update(gate.__dict__)
        self.paused = asyncio.Event()
        self.resume = asyncio.Event()
        self.disarm()

    def arm(self, *, fail_at: int | None = None, pause_at: int | None = None) -> None:
        self.fail_at, self.pause_at, self.entered = fail_at, pause_at, 0
        self.paused.clear()
        self.resume = asyncio.Event()

    def disarm(self) -> None:
        self.fail_at: int | None = None
        self.pause_at: int | None = None
        self.entered = 0

    async def __aenter__(self) -> None:
        self.entered += 1
        if self.pause_at is not None and self.entered > self.pause_at:
            self.pause_at = None
            self.paused.set()
            await self.resume.wait()
        if self.fail_at is not None and self.entered > self.fail_at:
            self.fail_at = None
            raise Crash("a bulk write failed")
        await super().__aenter__()


class FaultyRelay(Relay):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.write_gate = self.gate = FaultyGate(self.write_gate)
        self.fail_checkpoint_of: str | None = None

    async def save_checkpoint(self, name: str, position: int) -> None:
        if name == self.fail_checkpoint_of:
            self.fail_checkpoint_of = None
            raise Crash("killed before its checkpoint")
        await super().save_checkpoint(name, position)


class Reader:
    """An api process: its progress from the relays' feed (and the checkpoints, as its
    follower reads them), its answers from the served schema, as a client's query gets
    them. It checks, whenever asked, what clients may rely on at any moment.

    ``expected``: per read model and document, the positions of the events that set its
    version (from the outbox, through the projectors), so what a query at ``minVersion``
    N must show at least is known without trusting the relays.
    """

    def __init__(self, engine: Any, db: Any) -> None:
        self.engine = engine
        self.db = ReadDatabase(db)
        self.progress = Progress()
        self.follower = ProgressFollower(self.db, self.progress, ProgressFeed(engine))
        self.schema = build_schema(limits=Limits(max_aliases=10_000, max_tokens=100_000,
                                                 max_cost=10**9))  # fmt: skip
        self.context = Context(
            bus=None, db=self.db, progress=self.progress, feeds=None,  # type: ignore[arg-type]
            consistency_timeout=0.0, max_page_size=100,
            principal=Principal("model", frozenset({ADMIN_ROLE})),
        )  # fmt: skip
        self.projectors = {p.name: p for p in all_projections() if p.name in QUERIED}
        self.expected: dict[str, dict[str, list[int]]] = {name: {} for name in QUERIED}
        self.read_until = 0
        self.head = 0
        self.checkpoints: dict[str, int] = {}
        self.versions: dict[tuple[str, str], int] = {}

    async def start(self) -> None:
        await self.follower.start()

    async def check(self) -> None:
        """Follows the feed, then checks checkpoints, versions and ``minVersion`` answers."""
        await self._read_outbox()
        await self.follower.catch_up()
        stored = await checkpoints.load_all(self.db)
        for name, checkpoint in stored.items():
            if name in self.checkpoints or "__g" not in name:
                before = self.checkpoints.get(name, 0)
                assert checkpoint.position >= before, (
                    f"checkpoint {name} went back from {before} to {checkpoint.position}"
                )
                self.checkpoints[name] = checkpoint.position
        for name, field in QUERIED.items():
            position = self.progress.position(name)
            stored_position = stored[name].position if name in stored else 0
            assert position <= stored_position, (
                f"{name}: the api process is at {position}, its checkpoint at {stored_position}"
            )
            await self._check_answers(name, field, position)
            if position < self.head:
                await self._check_not_yet(name, field, position + 1)

    async def _read_outbox(self) -> None:
        async with self.engine.connect() as conn:
            while events := await outbox.read_after(conn, self.read_until, 500):
                for event in events:
                    self._expect(event)
                self.read_until = events[-1].position
            self.head = await outbox.head(conn)

    def _expect(self, event: RecordedEvent) -> None:
        for name, projector in self.projectors.items():
            for write in projector.project(event):
                if write.collection != name or write.key is None:
                    continue
                if write.document is not None and not write.shell:
                    self.expected[name].setdefault(write.key, []).append(event.position)
                elif (
                    write.update is not None
                    and "version" in write.update.get("$set", {})
                    and write.key in self.expected[name]  # an update of a document that exists
                ):
                    self.expected[name][write.key].append(event.position)

    async def _query(self, field: str, keys: list[str], min_version: int) -> Any:
        aliases = " ".join(
            f'd{i}: {field}(id: "{key}", minVersion: {min_version}) {{ id version }}'
            for i, key in enumerate(keys)
        )
        return await self.schema.execute(f"{{ {aliases} }}", context_value=self.context)

    async def _check_answers(self, name: str, field: str, min_version: int) -> None:
        """A query at the version the process reached: each document holds at least
        every event up to it, and no document's version went back."""
        keys = sorted(self.expected[name])
        if not keys:
            return
        result = await self._query(field, keys, min_version)
        assert not result.errors, f"{field} at minVersion {min_version}: {result.errors}"
        for i, key in enumerate(keys):
            document = result.data[f"d{i}"]
            due = [p for p in self.expected[name][key] if p <= min_version]
            if due:
                assert document is not None, (
                    f"{field} {key} missing at minVersion {min_version} (created at {due[0]})"
                )
            if document is None:
                continue
            version = int(document["version"])
            assert version >= max(due, default=0), (
                f"{field} {key} at minVersion {min_version} answered version {version}, "
                f"older than event {max(due)} that it must hold"
            )
            seen = self.versions.get((name, key), 0)
            assert version >= seen, f"{field} {key}'s version went back from {seen} to {version}"
            self.versions[(name, key)] = version

    async def _check_not_yet(self, name: str, field: str, min_version: int) -> None:
        """A version the process has not reached is not answered (no wait here)."""
        result = await self._query(field, [str(uuid.uuid4())], min_version)
        codes = [error.extensions.get("code") for error in result.errors or []]
        assert codes == ["NOT_YET_CONSISTENT"], (
            f"{field} at minVersion {min_version} beyond {name}'s position answered "
            f"{result.data} {result.errors}"
        )


class ReadSide(RuleBasedStateMachine):
    products = Bundle("products")
    customers = Bundle("customers")
    orders = Bundle("orders")

    def __init__(self, mongo_url: str, write_store: str, check_versions: bool) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.check_versions = check_versions
        self.skus = 0
        self.resources = contextlib.AsyncExitStack()
        self.run(self._open(mongo_url, write_store))

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(work, 120))

    async def _open(self, mongo_url: str, write_store: str) -> None:
        """``write_store``: a SQLite file's URL, or a PostgreSQL server's (a fresh database
        on it for this run)."""
        if write_store.startswith("postgresql"):
            write_store = await self.resources.enter_async_context(fresh_database(write_store))
        self.engine = create_engine(write_store)
        self.resources.push_async_callback(self.engine.dispose)
        await create_schema(self.engine)
        self.bus = CommandBus(self.engine)
        self.resources.callback(self.bus.close)
        self.client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
        self.resources.push_async_callback(self.client.close)
        self.name = f"model_{uuid.uuid4().hex[:12]}"
        self.resources.push_async_callback(self.client.drop_database, self.name)
        self.db = self.client[self.name]
        self.relays = [await self._relay(), await self._relay()]
        self.reader = Reader(self.engine, self.db)
        await self.reader.start()

    async def _relay(self) -> FaultyRelay:
        relay = FaultyRelay(
            self.engine, ReadDatabase(self.db), all_projections(), Progress(),
            batch_size=6, write_chunk=3, check_versions=self.check_versions,
            feed=ProgressFeed(self.engine),
        )  # fmt: skip
        await relay.setup()
        return relay

    def teardown(self) -> None:
        try:
            self.run(self._settle_and_compare())
        finally:
            self.run(self.resources.aclose())
            self.loop.close()

    @invariant()
    def what_clients_see_holds(self) -> None:
        self.run(self.reader.check())

    # --- commands -------------------------------------------------------------------

    async def _do(self, command: Command) -> str | None:
        try:
            outcome = await self.bus.execute(command)
        except DomainError:
            return None
        return outcome.id

    def _returning(self, command: Command) -> Any:
        made = self.run(self._do(command))
        return multiple() if made is None else made

    # Every run starts with a shop that can take orders, so its relay steps have work.
    @initialize(target=products, stocks=st.lists(st.integers(0, 6), min_size=1, max_size=3))
    def open_the_shop(self, stocks: list[int]) -> Any:
        return multiple(*(made for stock in stocks if (made := self._product(stock))))

    @initialize(target=customers)
    def first_customer(self) -> Any:
        return self._customer()

    @rule(target=products, stock=st.integers(0, 6))
    def create_product(self, stock: int) -> Any:
        made = self._product(stock)
        return multiple() if made is None else made

    def _product(self, stock: int) -> str | None:
        self.skus += 1
        return self.run(self._do(
            CreateProduct(sku=f"P{self.skus}", name=f"p{self.skus}", category="c",
                          price_cents=100 * self.skus, initial_stock=stock)
        ))  # fmt: skip

    @rule(target=customers)
    def register_customer(self) -> Any:
        made = self._customer()
        return multiple() if made is None else made

    def _customer(self) -> str | None:
        return self.run(self._do(
            RegisterCustomer(email=f"{uuid.uuid4().hex[:8]}@example.org", name="Ada", address=HOME)
        ))  # fmt: skip

    @rule(target=orders, customer=customers, lines=st.lists(
        st.tuples(products, st.integers(1, 3)), min_size=1, max_size=3,
        unique_by=lambda line: line[0]))  # fmt: skip
    def place_order(self, customer: str, lines: list[tuple[str, int]]) -> Any:
        return self._returning(
            PlaceOrder(customer, tuple(OrderLineRequest(p, q) for p, q in lines))
        )

    @rule(product=products, quantity=st.integers(1, 5))
    def restock(self, product: str, quantity: int) -> None:
        self.run(self._do(RestockProduct(product, quantity)))

    @rule(product=products, price=st.integers(0, 5000))
    def change_price(self, product: str, price: int) -> None:
        self.run(self._do(ChangeProductPrice(product, price)))

    @rule(product=consumes(products))
    def discontinue(self, product: str) -> None:
        self.run(self._do(DiscontinueProduct(product)))

    @rule(order=consumes(orders), ship=st.booleans())
    def settle_order(self, order: str, ship: bool) -> None:
        self.run(self._do(ShipOrder(order, "T1") if ship else CancelOrder(order, "no")))

    @rule(customer=customers, name=st.sampled_from(["Bea", "Cy", "Di"]))
    def rename(self, customer: str, name: str) -> None:
        self.run(self._do(RenameCustomer(customer, name)))

    # --- the read side ----------------------------------------------------------------

    @rule(which=st.integers(0, 1), fault=st.sampled_from(FAULTS), at=st.integers(0, 20),
          projection=st.sampled_from([p.name for p in all_projections()]))  # fmt: skip
    def relay_step(self, which: int, fault: str, at: int, projection: str) -> None:
        relay = self.relays[which]
        if fault == "before writing":
            relay.gate.arm(fail_at=0)
        elif fault == "while writing":
            relay.gate.arm(fail_at=at)
        elif fault == "before its checkpoint":
            relay.fail_checkpoint_of = projection
        self.run(self._step(relay))
        relay.gate.disarm()
        relay.fail_checkpoint_of = None

    async def _step(self, relay: Relay) -> None:
        # What Relay.run does with each outcome of a step (it logs and goes on).
        with contextlib.suppress(LeaseLost, ProjectionsFailed, Crash):
            await relay.step()

    @rule(which=st.integers(0, 1))
    def stall_past_the_lease(self, which: int) -> None:
        self.run(lapse(self.relays[which].lease))

    @rule(which=st.integers(0, 1), at=st.integers(0, 12), release=st.booleans())
    def stall_mid_batch_while_the_other_takes_over(
        self, which: int, at: int, release: bool
    ) -> None:
        self.run(self._stall_mid_batch(self.relays[which], self.relays[1 - which], at, release))

    async def _stall_mid_batch(
        self, stalled: FaultyRelay, other: Relay, at: int, release: bool
    ) -> None:
        stalled.gate.arm(pause_at=at)
        batch = asyncio.ensure_future(self._step(stalled))
        await _first(batch, stalled.gate.paused.wait())
        if not batch.done():
            await lapse(stalled.lease)
            await self._step(other)
            if release:
                await other.lease.release()
            stalled.gate.resume.set()
        await batch
        stalled.gate.disarm()

    @rule(which=st.integers(0, 1))
    def kill_and_restart(self, which: int) -> None:
        async def restart() -> None:
            await lapse(self.relays[which].lease)  # a dead process's lease runs out
            self.relays[which] = await self._relay()

        self.run(restart())

    @rule(which=st.integers(0, 1))
    def shut_down_gracefully(self, which: int) -> None:
        self.run(self.relays[which].lease.release())

    @rule(dies_after=st.one_of(st.none(), st.integers(0, 6)))
    def rebuild_everything(self, dies_after: int | None) -> None:
        self.run(self._rebuild(dies_after))

    async def _rebuild(self, dies_after: int | None) -> None:
        real_switch = checkpoints.switch
        switched = 0

        async def switch(*args: Any, **kwargs: Any) -> None:
            nonlocal switched
            if dies_after is not None and switched == dies_after:
                raise Crash("the rebuild died while switching")
            switched += 1
            await real_switch(*args, **kwargs)

        checkpoints.switch = switch  # type: ignore[assignment]
        done = asyncio.Event()

        async def relays_keep_running() -> None:
            while not done.is_set():  # each gives the lease up when asked (Relay.run)
                for relay in self.relays:
                    await relay.lease.acquire()
                await asyncio.sleep(0.01)

        pump = asyncio.ensure_future(relays_keep_running())
        try:
            await rebuild(
                self.engine, self.db, all_projections(), batch_size=5, write_chunk=3,
                check_versions=self.check_versions, grace=0,
            )  # fmt: skip
        except Crash:
            pass
        finally:
            checkpoints.switch = real_switch  # type: ignore[assignment]
            done.set()
            await pump
        # The replaced collections were dropped at once (grace=0): as if every process
        # had read the checkpoints during the grace, as they do at least every second.
        await self.reader.follower.poll_checkpoints()

    # --- the check --------------------------------------------------------------------

    async def _settle_and_compare(self) -> None:
        """The relays catch up, as they would once faults stop; then the read models
        must equal a fresh replay of the whole outbox."""
        for relay in self.relays:
            relay.gate.disarm()
            relay.fail_checkpoint_of = None
        await self.relays[1].lease.release()
        relay = self.relays[0]
        for _ in range(1000):
            relay._retry_at.clear()  # no back-off waits in a test
            try:
                read = await relay.step()
            except (LeaseLost, ProjectionsFailed):
                continue
            assert read is not None, "relay 0 did not get the lease"
            if read == 0:
                break
        fresh = self.client[f"{self.name}_replay"]
        try:
            replay = Relay(self.engine, fresh, all_projections(), Progress(), write_chunk=50)
            await replay.setup()
            while await replay.run_once():
                pass
            assert await snapshot(self.db) == await snapshot(fresh)
        finally:
            await self.client.drop_database(fresh.name)


async def _first(*waits: Awaitable[Any]) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks[1:]:
        task.cancel()
    await asyncio.gather(*tasks[1:], return_exceptions=True)


@pytest.mark.parametrize("check_versions", [False, True], ids=["guard-in-filter", "guard-in-relay"])
@pytest.mark.parametrize("write_store", ["sqlite", "postgresql"])
@pytest.mark.timeout(0 if "MODEL_EXAMPLES" in os.environ else 600)
def test_read_models_always_end_equal_to_a_replay(
    request: pytest.FixtureRequest,
    mongo_url: str,
    tmp_path: Path,
    write_store: str,
    check_versions: bool,
) -> None:
    if write_store == "postgresql":
        # The production topology's stores: PostgreSQL, and FerretDB on PostgreSQL.
        server = request.getfixturevalue("postgres_url")
        mongo_url = request.getfixturevalue("ferretdb_on_postgres")
        url = lambda: server  # noqa: E731 - a fresh database per example (ReadSide._open)
    else:
        url = lambda: f"sqlite+aiosqlite:///{tmp_path / uuid.uuid4().hex}.db"  # noqa: E731
    run_state_machine_as_test(
        lambda: ReadSide(mongo_url, url(), check_versions),
        settings=settings(
            max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
            suppress_health_check=list(HealthCheck), database=EXAMPLES_DB, print_blob=True,
        ),
    )  # fmt: skip
