"""A randomised model test of the read side: whatever happens, the read models end equal
to a replay of the outbox from scratch.

Hypothesis drives commands, two relays (two processes, each with its own lease and
read database) taking turns, batches that fail before, during or after their writes
or before their checkpoint, relays that stall past their lease (also in the middle
of a batch, while the other takes over), relays that are killed and restarted, and
rebuilds (some dying half-way through their switch). After each run the surviving
relays catch up and every read-model document must equal a fresh replay's.

Bounded for ``make test``; ``MODEL_EXAMPLES=200 MODEL_STEPS=60 make test-model`` runs
a longer search.
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
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    multiple,
    rule,
    run_state_machine_as_test,
)
from pymongo import AsyncMongoClient

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
from domain.store import create_engine, create_schema
from projections import checkpoints
from projections.progress import Progress
from projections.readdb import ReadDatabase
from projections.rebuild import rebuild
from projections.registry import all_projections
from projections.relay import LeaseLost, ProjectionsFailed, Relay, WriteGate
from tests.integration.shop import snapshot
from tests.integration.test_relay_faults import lapse

T = TypeVar("T")
EXAMPLES = int(os.environ.get("MODEL_EXAMPLES", "6"))
STEPS = int(os.environ.get("MODEL_STEPS", "30"))
HOME = AddressData(line1="Main St 1", city="Berlin", postal_code="10115", country="DE")
FAULTS = ("none", "before writing", "while writing", "before its checkpoint")


class Crash(Exception):
    """An injected fault."""


class FaultyGate(WriteGate):
    """The relay's write gate, which can fail or pause at its n-th bulk write."""

    def __init__(self, gate: WriteGate) -> None:
        self.__dict__.update(gate.__dict__)
        self.fail_at: int | None = None
        self.pause_at: int | None = None
        self.paused = asyncio.Event()
        self.resume = asyncio.Event()
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


class ReadSide(RuleBasedStateMachine):
    products = Bundle("products")
    customers = Bundle("customers")
    orders = Bundle("orders")

    def __init__(self, mongo_url: str, folder: Path, check_versions: bool) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.check_versions = check_versions
        self.skus = 0
        self.run(self._open(mongo_url, folder))

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(work, 120))

    async def _open(self, mongo_url: str, folder: Path) -> None:
        self.engine = create_engine(f"sqlite+aiosqlite:///{folder / uuid.uuid4().hex}.db")
        await create_schema(self.engine)
        self.bus = CommandBus(self.engine)
        self.client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
        self.name = f"model_{uuid.uuid4().hex[:12]}"
        self.db = self.client[self.name]
        self.relays = [await self._relay(), await self._relay()]

    async def _relay(self) -> FaultyRelay:
        relay = FaultyRelay(
            self.engine, ReadDatabase(self.db), all_projections(), Progress(),
            batch_size=6, write_chunk=3, check_versions=self.check_versions,
        )  # fmt: skip
        await relay.setup()
        return relay

    def teardown(self) -> None:
        try:
            self.run(self._settle_and_compare())
        finally:
            self.run(self._close())
            self.loop.close()

    async def _close(self) -> None:
        await self.client.drop_database(self.name)
        await self.client.close()
        self.bus.close()
        await self.engine.dispose()

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

    @rule(target=products, stock=st.integers(0, 6))
    def create_product(self, stock: int) -> Any:
        self.skus += 1
        return self._returning(
            CreateProduct(sku=f"P{self.skus}", name=f"p{self.skus}", category="c",
                          price_cents=100 * self.skus, initial_stock=stock)
        )  # fmt: skip

    @rule(target=customers)
    def register_customer(self) -> Any:
        return self._returning(
            RegisterCustomer(email=f"{uuid.uuid4().hex[:8]}@example.org", name="Ada", address=HOME)
        )

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

    @rule(which=st.integers(0, 1), fault=st.sampled_from(FAULTS), at=st.integers(0, 8),
          projection=st.sampled_from([p.name for p in all_projections()]))  # fmt: skip
    def relay_step(self, which: int, fault: str, at: int, projection: str) -> None:
        relay = self.relays[which]
        if fault == "before writing":
            relay.gate.fail_at = 0
        elif fault == "while writing":
            relay.gate.fail_at = at
        elif fault == "before its checkpoint":
            relay.fail_checkpoint_of = projection
        self.run(self._step(relay))
        relay.gate.fail_at, relay.fail_checkpoint_of = None, None

    async def _step(self, relay: Relay) -> None:
        # What Relay.run does with each outcome of a step (it logs and goes on).
        with contextlib.suppress(LeaseLost, ProjectionsFailed, Crash):
            await relay.step()

    @rule(which=st.integers(0, 1))
    def stall_past_the_lease(self, which: int) -> None:
        self.run(lapse(self.relays[which].lease))

    @rule(which=st.integers(0, 1), at=st.integers(0, 6), release=st.booleans())
    def stall_mid_batch_while_the_other_takes_over(
        self, which: int, at: int, release: bool
    ) -> None:
        self.run(self._stall_mid_batch(self.relays[which], self.relays[1 - which], at, release))

    async def _stall_mid_batch(
        self, stalled: FaultyRelay, other: Relay, at: int, release: bool
    ) -> None:
        stalled.gate.pause_at, stalled.gate.resume = at, asyncio.Event()
        stalled.gate.paused.clear()
        batch = asyncio.ensure_future(self._step(stalled))
        await _first(batch, stalled.gate.paused.wait())
        if not batch.done():
            await lapse(stalled.lease)
            await self._step(other)
            if release:
                await other.lease.release()
            stalled.gate.resume.set()
        await batch
        stalled.gate.pause_at = None

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

    # --- the check --------------------------------------------------------------------

    async def _settle_and_compare(self) -> None:
        """The relays catch up, as they would once faults stop; then the read models
        must equal a fresh replay of the whole outbox."""
        for relay in self.relays:
            relay.gate.fail_at = relay.gate.pause_at = None
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
@pytest.mark.timeout(0 if "MODEL_EXAMPLES" in os.environ else 600)
def test_read_models_always_end_equal_to_a_replay(
    mongo_url: str, tmp_path: Path, check_versions: bool
) -> None:
    run_state_machine_as_test(
        lambda: ReadSide(mongo_url, tmp_path, check_versions),
        settings=settings(
            max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
            suppress_health_check=list(HealthCheck), database=None,
        ),
    )  # fmt: skip
