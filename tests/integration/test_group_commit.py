"""Group commit: concurrent commands share a transaction, with each one's own outcome."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from domain import outbox
from domain.aggregate import Aggregate
from domain.bus import CommandBus
from domain.commands import (
    AddressData,
    ChangeProductPrice,
    CreateProduct,
    OrderLineRequest,
    PlaceOrder,
    RegisterCustomer,
    RestockProduct,
)
from domain.errors import DomainError, Duplicate, InsufficientStock, InvalidState
from domain.handlers import HANDLERS
from domain.idempotency import CommandOutcome
from domain.model import customers, products
from domain.uow import UnitOfWork

ADDRESS = AddressData("1 Main Street", "Berlin", "10115", "DE")


class CountingBus(CommandBus):
    """Counts commits that wrote events (one per transaction)."""

    def __init__(self, engine: AsyncEngine, **options: Any) -> None:
        super().__init__(engine, **options)
        self.commits: list[int] = []
        self.on_commit(self.commits.append)


async def run_together(bus: CommandBus, *commands: Any, key: str | None = None) -> list[Any]:
    return await asyncio.gather(
        *(bus.execute(c, idempotency_key=key) for c in commands), return_exceptions=True
    )


def customer(n: int, email: str | None = None) -> RegisterCustomer:
    return RegisterCustomer(email or f"c{n}@example.com", f"Customer {n}", ADDRESS)


async def test_concurrent_commands_commit_together_each_with_its_own_answer(
    engine: AsyncEngine,
) -> None:
    bus = CountingBus(engine)
    commands = [customer(n) for n in range(20)]
    commands[7] = customer(7, email="c3@example.com")  # refused: c3 registers first
    results = await run_together(bus, *commands)

    assert isinstance(results[7], Duplicate)
    accepted = [r for i, r in enumerate(results) if i != 7]
    assert not [r for r in accepted if isinstance(r, BaseException)]
    assert sorted(r.version for r in accepted) == list(range(1, 20))  # arrival order, no gaps
    assert len(bus.commits) < len(accepted), "some commands should have shared a commit"
    async with engine.connect() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(customers)) == 19
        events = await outbox.read_after(conn, 0, 100)
    assert [e.aggregate_id for e in events] == [r.id for r in accepted]


async def test_a_command_that_fails_after_writing_leaves_nothing_and_spares_the_rest(
    engine: AsyncEngine,
) -> None:
    """The second line is short after the first was reserved: the reservation is undone,
    and the other commands of its group still commit."""
    bus = CountingBus(engine)
    plenty = await bus.execute(CreateProduct("plenty", "Plenty", "kitchen", 100, "", 100))
    scarce = await bus.execute(CreateProduct("scarce", "Scarce", "kitchen", 100, "", 1))
    buyer = await bus.execute(customer(0))
    short = PlaceOrder(buyer.id, (OrderLineRequest(plenty.id, 5), OrderLineRequest(scarce.id, 2)))
    fine = [PlaceOrder(buyer.id, (OrderLineRequest(plenty.id, 1),)) for _ in range(6)]
    results = await run_together(bus, *fine[:3], short, *fine[3:])

    assert isinstance(results[3], InsufficientStock)
    assert not [r for i, r in enumerate(results) if i != 3 and isinstance(r, BaseException)]
    async with engine.connect() as conn:
        reserved = dict(
            (await conn.execute(sa.select(products.c.id, products.c.stock_reserved))).all()
        )
    assert reserved == {plenty.id: 6, scarce.id: 0}


async def test_one_idempotency_key_twice_in_a_group_runs_once(engine: AsyncEngine) -> None:
    bus = CountingBus(engine)
    first, second, *others = await run_together(bus, *[customer(1)] * 2, key="register-1")
    assert not others
    assert first == second
    async with engine.connect() as conn:
        assert len(await outbox.read_after(conn, 0, 100)) == 1


async def test_refusals_in_a_group_are_the_same_as_one_by_one(engine: AsyncEngine) -> None:
    grouped = await run_together(
        CommandBus(engine),
        customer(1),
        customer(2, email="not an email"),
        customer(3, email="c1@example.com"),
    )
    assert not isinstance(grouped[0], BaseException)
    assert all(isinstance(r, DomainError) for r in grouped[1:])
    alone = CommandBus(engine, group_commit=False)
    for command, result in zip([customer(2, "not an email"), customer(3, "c1@example.com")],
                               grouped[1:], strict=True):  # fmt: skip
        with pytest.raises(DomainError) as refused:
            await alone.execute(command)
        assert (type(refused.value), str(refused.value)) == (type(result), str(result))


async def shop(bus: CommandBus, stock: int = 100) -> tuple[str, str]:
    mug = await bus.execute(CreateProduct("MUG", "Mug", "kitchen", 100, "", stock))
    buyer = await bus.execute(customer(0))
    assert mug.id is not None
    assert buyer.id is not None
    return mug.id, buyer.id


async def test_a_refusal_after_writing_is_undone_alone_and_its_group_commits_once(
    engine: AsyncEngine,
) -> None:
    """A command refused after it wrote rolls back to its savepoint; the group goes on."""

    async def reserve_then_refuse(command: RestockProduct, uow: UnitOfWork) -> Aggregate:
        assert await uow.stock.reserve(command.product_id, 1)
        raise InvalidState("refused after reserving a unit", "id")

    bus = CountingBus(engine, handlers={**HANDLERS, RestockProduct: reserve_then_refuse})
    mug, buyer = await shop(bus)
    fine = PlaceOrder(buyer, (OrderLineRequest(mug, 1),))
    commits_before = len(bus.commits)
    results = await run_together(bus, fine, fine, RestockProduct(mug, 1), fine)

    assert isinstance(results[2], InvalidState)
    assert [type(r) for i, r in enumerate(results) if i != 2] == [CommandOutcome] * 3
    assert len(bus.commits) == commits_before + 1
    async with engine.connect() as conn:
        assert await conn.scalar(sa.select(products.c.stock_reserved)) == 3


class _Deadlock(Exception):
    sqlstate = "40P01"


class _SerializationFailure(Exception):
    pgcode = "40001"  # psycopg2 names it pgcode, asyncpg and psycopg sqlstate


@pytest.mark.parametrize("cause", [_Deadlock, _SerializationFailure])
@pytest.mark.parametrize("group_commit", [True, False])
async def test_a_deadlock_or_serialization_failure_runs_the_command_again(
    engine: AsyncEngine, cause: type[Exception], group_commit: bool
) -> None:
    calls: list[Any] = []

    async def fails_once(command: PlaceOrder, uow: UnitOfWork) -> Aggregate:
        calls.append(command)
        if len(calls) <= 2:  # the group, then the first command alone or again
            raise sa.exc.DBAPIError("UPDATE products", {}, cause("deadlock detected"))
        return await HANDLERS[PlaceOrder](command, uow)

    bus = CommandBus(engine, {**HANDLERS, PlaceOrder: fails_once}, group_commit=group_commit)
    mug, buyer = await shop(bus)
    results = await run_together(bus, *[PlaceOrder(buyer, (OrderLineRequest(mug, 1),))] * 3)
    assert [type(r) for r in results] == [CommandOutcome] * 3
    async with engine.connect() as conn:
        assert await conn.scalar(sa.select(products.c.stock_reserved)) == 3


@pytest.fixture
def statements() -> Iterator[list[str]]:
    """Every statement sent by any engine, and "COMMIT" for each commit."""
    sent: list[str] = []

    def on_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(" ".join(statement.split()))

    def on_commit(conn: Any) -> None:
        sent.append("COMMIT")

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", on_execute)
    sa.event.listen(sa.engine.Engine, "commit", on_commit)
    yield sent
    sa.event.remove(sa.engine.Engine, "before_cursor_execute", on_execute)
    sa.event.remove(sa.engine.Engine, "commit", on_commit)


async def test_a_group_writes_its_events_in_one_insert_after_every_row_lock(
    engine: AsyncEngine, statements: list[str]
) -> None:
    """Nothing waits for a row while holding the outbox lock: the events of the whole
    group are appended at its end, in one statement, and then only the idempotency
    records of the group are written."""
    bus = CountingBus(engine)
    mug, buyer = await shop(bus)
    order = PlaceOrder(buyer, (OrderLineRequest(mug, 1),))
    statements.clear()
    await run_together(bus, order, RestockProduct(mug, 5), order, key=None)
    await run_together(bus, *(PlaceOrder(buyer, (OrderLineRequest(mug, n),)) for n in (1, 2)),
                       key=None)  # fmt: skip
    transactions = " ; ".join(statements).split("COMMIT")[:-1]
    assert len(transactions) == len(bus.commits) - 2  # the two setup commits came before
    for transaction in transactions:
        sent = transaction.split(" ; ")
        appends = [i for i, s in enumerate(sent) if "INSERT INTO outbox" in s]
        assert len(appends) == 1, sent
        first = next(i for i, s in enumerate(sent) if "advisory" in s or "INTO outbox" in s)
        later = sent[first:]
        assert not [s for s in later if re.search(r"\b(products|customers|orders)\b", s)], later


async def test_a_no_op_in_a_group_answers_the_last_position_before_it(engine: AsyncEngine) -> None:
    """The position of the group's last event before it, else the head before the group
    (unchanged by appending a group's events at its end; a guard, not a fix)."""
    bus = CountingBus(engine)
    mug, _ = await shop(bus)  # positions 1 and 2
    same_price = ChangeProductPrice(mug, 100)
    first, created = await run_together(bus, same_price, CreateProduct("CUP", "Cup", "k", 1))
    after, again = await run_together(bus, CreateProduct("BOWL", "Bowl", "k", 1), same_price)
    assert [(r.version, r.aggregate_version) for r in (first, created, after, again)] == [
        (2, 1), (3, 1), (4, 1), (4, 1)
    ]  # fmt: skip


async def test_a_failing_commit_listener_does_not_turn_committed_commands_into_errors(
    bus: CommandBus,
) -> None:
    def broken(position: int) -> None:
        raise RuntimeError("a listener bug")

    bus.on_commit(broken)
    outcome = await bus.execute(
        CreateProduct(sku="L-1", name="Lamp", category="c", price_cents=100)
    )
    assert outcome.version == 1


class FailingObserver:
    def answered(self, command: str, outcome: str, seconds: float) -> None:
        raise RuntimeError("the metrics backend is broken")

    def grouped(self, size: int) -> None:
        raise RuntimeError("the metrics backend is broken")


@pytest.mark.parametrize("group_commit", [True, False])
async def test_a_failing_observer_changes_no_answer(
    engine: AsyncEngine, group_commit: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """What measures the bus cannot fail a command, nor leave a group's callers waiting."""
    bus = CommandBus(engine, observer=FailingObserver(), group_commit=group_commit)
    try:
        results = await asyncio.wait_for(run_together(bus, *map(customer, range(5))), 30)
    finally:
        bus.close()
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert sorted(r.version for r in results) == [1, 2, 3, 4, 5]
    assert "the bus observer failed" in caplog.text
