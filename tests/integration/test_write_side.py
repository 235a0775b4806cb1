"""The command bus on real SQLite: state, outbox and idempotency key in one transaction."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from domain import outbox
from domain.bus import CommandBus
from domain.commands import (
    ChangeProductPrice,
    CreateProduct,
    DiscontinueProduct,
    RestockProduct,
    UpdateProduct,
)
from domain.errors import DomainError, Duplicate, IdempotencyKeyReused, NotFound, VersionConflict
from domain.model import idempotency_keys, products
from domain.model import outbox as outbox_table
from tests.conftest import eventually


def new_product(sku: str = "mug-1", **overrides: Any) -> CreateProduct:
    fields: dict[str, Any] = {
        "sku": sku,
        "name": "Mug",
        "category": "kitchen",
        "price_cents": 1299,
        "initial_stock": 5,
    }
    return CreateProduct(**{**fields, **overrides})


async def counts(engine: AsyncEngine) -> tuple[int, int, int]:
    async with engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            [
                await conn.scalar(sa.select(sa.func.count()).select_from(t))
                for t in (products, outbox_table, idempotency_keys)
            ]
        )


async def test_create_writes_the_row_and_its_event_in_one_go(
    bus: CommandBus, engine: AsyncEngine
) -> None:
    outcome = await bus.execute(new_product())
    assert (outcome.version, outcome.aggregate_version) == (1, 1)
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(products))).mappings().one()
        [event] = await outbox.read_after(conn, 0, 10)
    assert (row["id"], row["sku"], row["stock_on_hand"]) == (outcome.id, "MUG-1", 5)
    assert (event.position, event.type, event.aggregate_id) == (1, "ProductCreated", outcome.id)
    assert event.metadata["command"] == "CreateProduct"


async def test_refused_command_writes_nothing_but_its_key_record(
    bus: CommandBus, engine: AsyncEngine
) -> None:
    with pytest.raises(DomainError):
        await bus.execute(new_product(name="", price_cents=-1))
    assert await counts(engine) == (0, 0, 0)
    with pytest.raises(DomainError):
        await bus.execute(new_product(name="", price_cents=-1), idempotency_key="k")
    assert await counts(engine) == (0, 0, 1)  # the refusal, answered again to a repeat


async def test_sku_is_unique_case_insensitively(bus: CommandBus, engine: AsyncEngine) -> None:
    await bus.execute(new_product("mug-1"))
    with pytest.raises(Duplicate) as raised:
        await bus.execute(new_product("MUG-1"))
    assert raised.value.field == "sku"
    assert await counts(engine) == (1, 1, 0)


async def test_repeat_with_the_same_key_returns_the_first_result_and_writes_nothing(
    bus: CommandBus, engine: AsyncEngine
) -> None:
    first = await bus.execute(new_product(), idempotency_key="create-mug")
    again = await bus.execute(new_product(), idempotency_key="create-mug")
    assert again == first
    assert await counts(engine) == (1, 1, 1)


async def test_same_key_with_other_arguments_is_refused(
    bus: CommandBus, engine: AsyncEngine
) -> None:
    await bus.execute(new_product(), idempotency_key="k1")
    with pytest.raises(IdempotencyKeyReused):
        await bus.execute(new_product("other"), idempotency_key="k1")
    assert await counts(engine) == (1, 1, 1)


async def test_idempotency_survives_a_new_engine(database_url: str, engine: AsyncEngine) -> None:
    from domain.store import create_engine

    first = await CommandBus(engine).execute(new_product(), idempotency_key="k1")
    other_process = create_engine(database_url)
    try:
        again = await CommandBus(other_process).execute(new_product(), idempotency_key="k1")
    finally:
        await other_process.dispose()
    assert again == first


@pytest.mark.parametrize("key", ["", "k" * 201])
async def test_idempotency_key_length_is_checked(bus: CommandBus, key: str) -> None:
    with pytest.raises(DomainError) as raised:
        await bus.execute(new_product(), idempotency_key=key)
    assert (raised.value.code, raised.value.field) == ("VALIDATION_FAILED", "idempotencyKey")


async def test_expected_version_mismatch_writes_nothing(
    bus: CommandBus, engine: AsyncEngine
) -> None:
    created = await bus.execute(new_product())
    assert created.id is not None
    with pytest.raises(VersionConflict):
        await bus.execute(ChangeProductPrice(created.id, 999, expected_version=2))
    assert await counts(engine) == (1, 1, 0)


async def test_commands_on_a_missing_product_answer_not_found(bus: CommandBus) -> None:
    for command in (
        UpdateProduct("nope", name="x"),
        ChangeProductPrice("nope", 1),
        RestockProduct("nope", 1),
        DiscontinueProduct("nope"),
    ):
        with pytest.raises(NotFound) as raised:
            await bus.execute(command)
        assert raised.value.field == "id"


async def test_no_op_answers_the_position_that_already_reflects_it(bus: CommandBus) -> None:
    created = await bus.execute(new_product())
    assert created.id is not None
    await bus.execute(new_product("other"))
    same_price = await bus.execute(ChangeProductPrice(created.id, 1299))
    assert (same_price.version, same_price.aggregate_version) == (2, 1)


async def test_each_change_bumps_aggregate_version_and_position(bus: CommandBus) -> None:
    created = await bus.execute(new_product())
    assert created.id is not None
    pid = created.id
    results = [
        await bus.execute(UpdateProduct(pid, name="Big Mug", expected_version=1)),
        await bus.execute(ChangeProductPrice(pid, 1500, expected_version=2)),
        await bus.execute(RestockProduct(pid, 3)),
        await bus.execute(DiscontinueProduct(pid, expected_version=4)),
    ]
    assert [(r.version, r.aggregate_version) for r in results] == [(2, 2), (3, 3), (4, 4), (5, 5)]


async def test_commit_listeners_hear_the_last_position(bus: CommandBus) -> None:
    heard: list[int] = []
    bus.on_commit(heard.append)
    created = await bus.execute(new_product())
    assert created.id is not None
    await bus.execute(ChangeProductPrice(created.id, 1299))  # a no-op: nothing to hear
    assert heard == [1]


async def test_concurrent_restocks_are_serialised_without_losing_any(
    bus: CommandBus, engine: AsyncEngine
) -> None:
    created = await bus.execute(new_product(initial_stock=0))
    assert created.id is not None
    pid = created.id
    outcomes = await asyncio.gather(*(bus.execute(RestockProduct(pid, 1)) for _ in range(40)))
    assert sorted(o.aggregate_version for o in outcomes) == list(range(2, 42))
    async with engine.connect() as conn:
        assert await conn.scalar(sa.select(products.c.stock_on_hand)) == 40
        positions = [e.position for e in await outbox.read_after(conn, 0, 100)]
    assert positions == list(range(1, 42))


async def test_a_reader_after_its_checkpoint_never_skips_an_event_of_concurrent_writers(
    bus: CommandBus, engine: AsyncEngine
) -> None:
    """A reader following the outbox as the relay does sees every position once, in order.

    The race it guards against is narrow; the next test provokes it deterministically.
    """
    writers_done = asyncio.Event()
    seen: list[int] = []

    async def follow_like_the_relay() -> None:
        last = 0
        while True:
            finished = writers_done.is_set()
            async with engine.connect() as conn:
                events = await outbox.read_after(conn, last, 1000)
            seen.extend(e.position for e in events)
            if events:
                last = events[-1].position
            elif finished:
                return
            await asyncio.sleep(0)  # let the writers run; this is a yield, not a wait

    reader = asyncio.create_task(follow_like_the_relay())
    await asyncio.gather(*(bus.execute(new_product(f"sku-{n}")) for n in range(150)))
    writers_done.set()
    await reader
    async with engine.connect() as conn:
        written = [e.position for e in await outbox.read_after(conn, 0, 1000)]
    assert len(written) == 150
    assert seen == written


async def test_a_later_position_never_becomes_visible_before_an_earlier_one(
    engine: AsyncEngine,
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises writers: BEGIN IMMEDIATE")
    from domain.events import Event

    def event(n: int) -> list[Event]:
        return [Event("Probe", "Probe", f"probe-{n}", 1)]

    async def second_writer() -> None:
        async with engine.begin() as conn:
            await outbox.append(conn, event(2), now=datetime.now(UTC), metadata={})

    async with engine.connect() as first:
        await first.begin()
        [p1] = await outbox.append(first, event(1), now=datetime.now(UTC), metadata={})
        second = asyncio.create_task(second_writer())

        async def second_done_or_waiting_for_the_lock() -> bool:
            async with engine.connect() as conn:
                waiting = await conn.scalar(
                    sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                            "AND NOT granted")
                )  # fmt: skip
            return second.done() or bool(waiting)

        await eventually(second_done_or_waiting_for_the_lock)
        async with engine.connect() as reader:
            assert await outbox.read_after(reader, 0, 10) == []  # nothing jumps the queue
        await first.commit()
    await second
    async with engine.connect() as reader:
        positions = [e.position for e in await outbox.read_after(reader, 0, 10)]
    assert positions == [p1, p1 + 1]


def codes(error: DomainError) -> set[tuple[str, str | None]]:
    return {(p.code, p.field) for p in error.problems}


async def test_an_unknown_product_and_a_bad_field_are_reported_together(bus: CommandBus) -> None:
    with pytest.raises(DomainError) as raised:
        await bus.execute(UpdateProduct("nope", name=" ", description="d" * 5001))
    assert codes(raised.value) == {
        ("NOT_FOUND", "id"), ("VALIDATION_FAILED", "name"), ("VALIDATION_FAILED", "description")
    }  # fmt: skip
    for command, field in ((ChangeProductPrice("nope", -1), "priceCents"),
                           (RestockProduct("nope", 0), "quantity")):  # fmt: skip
        with pytest.raises(DomainError) as raised:
            await bus.execute(command)
        assert codes(raised.value) == {("NOT_FOUND", "id"), ("VALIDATION_FAILED", field)}


async def test_a_taken_sku_and_a_bad_field_are_reported_together(bus: CommandBus) -> None:
    await bus.execute(new_product("mug-1"))
    with pytest.raises(DomainError) as raised:
        await bus.execute(new_product("MUG-1", name=""))
    assert codes(raised.value) == {("DUPLICATE", "sku"), ("VALIDATION_FAILED", "name")}


async def test_restocking_a_discontinued_product_by_zero_reports_both(bus: CommandBus) -> None:
    created = await bus.execute(new_product())
    assert created.id is not None
    await bus.execute(DiscontinueProduct(created.id))
    with pytest.raises(DomainError) as raised:
        await bus.execute(RestockProduct(created.id, 0))
    assert codes(raised.value) == {("VALIDATION_FAILED", "quantity"), ("INVALID_STATE", None)}


async def test_a_sku_that_only_upper_cases_into_ascii_is_refused(bus: CommandBus) -> None:
    with pytest.raises(DomainError) as raised:
        await bus.execute(new_product("straße"))
    assert codes(raised.value) == {("VALIDATION_FAILED", "sku")}


async def test_restocking_past_the_32_bit_stock_limit_is_refused_on_quantity(
    bus: CommandBus, engine: AsyncEngine
) -> None:
    """stockOnHand is a 32-bit column on PostgreSQL and a 32-bit Int in the contract."""
    created = await bus.execute(new_product(initial_stock=0))
    assert created.id is not None
    async with engine.begin() as conn:
        await conn.execute(sa.update(products).values(stock_on_hand=2_147_483_647 - 1_000_000))
    await bus.execute(RestockProduct(created.id, 1_000_000))  # exactly at the limit
    with pytest.raises(DomainError) as raised:
        await bus.execute(RestockProduct(created.id, 1))
    assert codes(raised.value) == {("VALIDATION_FAILED", "quantity")}
    async with engine.connect() as conn:
        assert await conn.scalar(sa.select(products.c.stock_on_hand)) == 2_147_483_647


@pytest.mark.parametrize("bad", ["nul \x00 inside", "lone \ud800 surrogate"])
async def test_text_neither_store_can_keep_is_refused_with_its_field(
    bus: CommandBus, engine: AsyncEngine, bad: str
) -> None:
    with pytest.raises(DomainError) as raised:
        await bus.execute(new_product(name=bad, description=bad))
    assert codes(raised.value) == {("VALIDATION_FAILED", "name"),
                                   ("VALIDATION_FAILED", "description")}  # fmt: skip
    with pytest.raises(DomainError) as raised:
        await bus.execute(new_product(), idempotency_key=f"key {bad}")
    assert codes(raised.value) == {("VALIDATION_FAILED", "idempotencyKey")}
    with pytest.raises(DomainError) as raised:
        await bus.execute(UpdateProduct(bad, name="x"))
    assert codes(raised.value) == {("VALIDATION_FAILED", "id")}
    assert await counts(engine) == (0, 0, 0)


async def test_a_write_store_that_never_answers_makes_commands_unavailable_at_once() -> None:
    """A PostgreSQL address that accepts connections and says nothing (a partition, a
    dead host behind a proxy): every command answers UNAVAILABLE after the connect
    timeout, together, not one after another: no connection is tried after one answered."""
    import socket
    import threading

    from domain.errors import StoreUnavailable
    from domain.store import create_engine as create_store_engine

    arrived: list[float] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        held: list[socket.socket] = []

        def accept_and_say_nothing() -> None:
            with contextlib.suppress(OSError):
                while True:
                    held.append(listener.accept()[0])
                    arrived.append(time.monotonic())

        threading.Thread(target=accept_and_say_nothing, daemon=True).start()
        engine = create_store_engine(f"postgresql+asyncpg://nobody@127.0.0.1:{port}/shop")
        bus = CommandBus(engine)
        try:
            commands = [bus.execute(new_product(f"mug-{n}")) for n in range(4)]
            answered: list[float] = []
            outcomes = []
            for next_answer in asyncio.as_completed(commands, timeout=60):
                try:
                    outcomes.append(await next_answer)
                except StoreUnavailable as unavailable:
                    outcomes.append(unavailable)
                answered.append(time.monotonic())
        finally:
            bus.close()
            await engine.dispose()
            for connection in held:
                connection.close()
    assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
    assert arrived, "no command tried to connect"
    assert max(arrived) < min(answered), "a command tried to connect after another's timeout"
