"""Customers and orders on real SQLite: stock reserved all or nothing, never oversold."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from domain import outbox
from domain.bus import CommandBus
from domain.commands import (
    AddressData,
    CancelOrder,
    ChangeProductPrice,
    CreateProduct,
    DiscontinueProduct,
    OrderLineRequest,
    PlaceOrder,
    RegisterCustomer,
    RenameCustomer,
    ShipOrder,
    UpdateCustomerAddress,
)
from domain.errors import DomainError, Duplicate, InsufficientStock
from domain.model import order_lines, orders, products
from domain.repositories import Stock

HOME = AddressData(line1="Main St 1", city="Berlin", postal_code="10115", country="DE")


async def product(bus: CommandBus, sku: str, stock: int, price: int = 1000) -> str:
    outcome = await bus.execute(
        CreateProduct(sku=sku, name=sku.title(), category="c", price_cents=price,
                      initial_stock=stock)
    )  # fmt: skip
    assert outcome.id is not None
    return outcome.id


async def customer(bus: CommandBus, email: str = "ada@example.org") -> str:
    outcome = await bus.execute(RegisterCustomer(email=email, name="Ada", address=HOME))
    assert outcome.id is not None
    return outcome.id


def order(
    customer_id: str, *lines: tuple[str, int], address: AddressData | None = None
) -> PlaceOrder:
    return PlaceOrder(
        customer_id, tuple(OrderLineRequest(p, q) for p, q in lines), shipping_address=address
    )


async def stock(engine: AsyncEngine, product_id: str) -> tuple[int, int]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(products.c.stock_on_hand, products.c.stock_reserved).where(
                    products.c.id == product_id
                )
            )
        ).one()
    return row.stock_on_hand, row.stock_reserved


async def order_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(orders)) or 0)


async def test_placing_reserves_stock_at_the_current_prices(
    bus: CommandBus, engine: AsyncEngine
) -> None:
    mug, tee = await product(bus, "MUG", 5, 1299), await product(bus, "TEE", 3, 1999)
    await bus.execute(ChangeProductPrice(mug, 1500))
    placed = await bus.execute(order(await customer(bus), (mug, 2), (tee, 1)))
    assert (await stock(engine, mug), await stock(engine, tee)) == ((5, 2), (3, 1))
    async with engine.connect() as conn:
        event = (await outbox.read_after(conn, placed.version - 1, 1))[0]  # type: ignore[operator]
        saved_lines = (await conn.execute(sa.select(order_lines))).all()
    assert event.type == "OrderPlaced"
    assert [(line["sku"], line["unitPriceCents"]) for line in event.data["lines"]] == [
        ("MUG", 1500), ("TEE", 1999)
    ]  # fmt: skip
    assert event.data["totalCents"] == 2 * 1500 + 1999
    assert event.data["shippingAddress"]["city"] == "Berlin"  # the customer's address
    assert len(saved_lines) == 2


async def test_one_short_line_fails_the_whole_order_and_writes_nothing(
    bus: CommandBus, engine: AsyncEngine
) -> None:
    mug, tee = await product(bus, "MUG", 5), await product(bus, "TEE", 1)
    ada = await customer(bus)
    with pytest.raises(InsufficientStock) as raised:
        await bus.execute(order(ada, (mug, 2), (tee, 2)))
    assert raised.value.field == "lines.1.quantity"
    assert (await stock(engine, mug), await stock(engine, tee)) == ((5, 0), (1, 0))
    assert await order_count(engine) == 0


async def test_every_line_problem_is_reported_together(bus: CommandBus) -> None:
    mug, gone = await product(bus, "MUG", 1), await product(bus, "GONE", 9)
    await bus.execute(DiscontinueProduct(gone))
    ada = await customer(bus)
    bad_address = AddressData(line1="", city="x", postal_code="1", country="DE")
    with pytest.raises(DomainError) as raised:
        await bus.execute(
            order(ada, (mug, 2), ("nope", 1), (gone, 1), (mug, 1), (gone, 0), address=bad_address)
        )
    assert {(p.code, p.field) for p in raised.value.problems} == {
        ("INSUFFICIENT_STOCK", "lines.0.quantity"),
        ("NOT_FOUND", "lines.1.productId"),
        ("INVALID_STATE", "lines.2.productId"),
        ("VALIDATION_FAILED", "lines.3.productId"),
        ("INVALID_STATE", "lines.4.productId"),
        ("VALIDATION_FAILED", "lines.4.productId"),
        ("VALIDATION_FAILED", "lines.4.quantity"),
        ("VALIDATION_FAILED", "shippingAddress.line1"),
    }


async def test_an_unknown_customer_is_not_found(bus: CommandBus) -> None:
    mug = await product(bus, "MUG", 1)
    with pytest.raises(DomainError) as raised:
        await bus.execute(order("nobody", (mug, 1)))
    assert [(p.code, p.field) for p in raised.value.problems] == [("NOT_FOUND", "customerId")]


async def test_cancel_releases_and_ship_removes_the_reservation(
    bus: CommandBus, engine: AsyncEngine
) -> None:
    mug = await product(bus, "MUG", 10)
    ada = await customer(bus)
    first = await bus.execute(order(ada, (mug, 3)))
    second = await bus.execute(order(ada, (mug, 4)))
    assert await stock(engine, mug) == (10, 7)
    await bus.execute(CancelOrder(first.id, "changed my mind"))  # type: ignore[arg-type]
    assert await stock(engine, mug) == (10, 4)
    await bus.execute(ShipOrder(second.id, "TRACK-1"))  # type: ignore[arg-type]
    assert await stock(engine, mug) == (6, 0)


async def test_emails_are_unique_case_insensitively(bus: CommandBus) -> None:
    await customer(bus, "ada@example.org")
    with pytest.raises(Duplicate) as raised:
        await customer(bus, "ADA@Example.ORG")
    assert raised.value.field == "email"


async def test_concurrent_orders_never_take_the_same_unit(
    bus: CommandBus, engine: AsyncEngine
) -> None:
    mug = await product(bus, "MUG", 10)
    ada = await customer(bus)
    results = await asyncio.gather(
        *(bus.execute(order(ada, (mug, 1))) for _ in range(30)), return_exceptions=True
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 10
    assert all(isinstance(r, InsufficientStock) for r in results if isinstance(r, BaseException))
    assert await stock(engine, mug) == (10, 10)
    assert await order_count(engine) == 10


def codes(error: DomainError) -> set[tuple[str, str | None]]:
    return {(p.code, p.field) for p in error.problems}


async def test_a_taken_email_and_a_bad_field_are_reported_together(bus: CommandBus) -> None:
    await customer(bus, "ada@example.org")
    with pytest.raises(DomainError) as raised:
        await bus.execute(RegisterCustomer("ADA@example.org", "", HOME))
    assert codes(raised.value) == {("DUPLICATE", "email"), ("VALIDATION_FAILED", "name")}


async def test_an_unknown_order_and_a_bad_field_are_reported_together(bus: CommandBus) -> None:
    with pytest.raises(DomainError) as raised:
        await bus.execute(CancelOrder("nope", ""))
    assert codes(raised.value) == {("NOT_FOUND", "id"), ("VALIDATION_FAILED", "reason")}
    with pytest.raises(DomainError) as raised:
        await bus.execute(RenameCustomer("nope", ""))
    assert codes(raised.value) == {("NOT_FOUND", "id"), ("VALIDATION_FAILED", "name")}
    bad = AddressData(line1="x", city="y", postal_code="z", country="ß")
    with pytest.raises(DomainError) as raised:
        await bus.execute(UpdateCustomerAddress("nope", bad))
    assert codes(raised.value) == {("NOT_FOUND", "id"), ("VALIDATION_FAILED", "address.country")}


async def test_shipping_a_cancelled_order_without_tracking_reports_both(
    bus: CommandBus,
) -> None:
    mug = await product(bus, "MUG", 5)
    placed = await bus.execute(order(await customer(bus), (mug, 1)))
    assert placed.id is not None
    await bus.execute(CancelOrder(placed.id, "no"))
    with pytest.raises(DomainError) as raised:
        await bus.execute(ShipOrder(placed.id, ""))
    assert codes(raised.value) == {("VALIDATION_FAILED", "trackingNumber"), ("INVALID_STATE", None)}


@pytest.mark.parametrize("bad", ["\x00", "\udfff"])
async def test_order_and_address_text_neither_store_can_keep_is_refused_with_its_path(
    bus: CommandBus, engine: AsyncEngine, bad: str
) -> None:
    mug = await product(bus, "MUG", 5)
    ada = await customer(bus)
    with pytest.raises(DomainError) as raised:
        await bus.execute(order(ada, (mug, 1), (f"x{bad}", 1)))
    assert codes(raised.value) == {("VALIDATION_FAILED", "lines.1.productId")}
    address = AddressData(line1="Main St 1", city="Berlin", postal_code=f"1{bad}", country="DE")
    with pytest.raises(DomainError) as raised:
        await bus.execute(RegisterCustomer("bob@example.org", "Bob", address))
    assert codes(raised.value) == {("VALIDATION_FAILED", "address.postalCode")}
    assert await order_count(engine) == 0


async def test_stock_rows_are_moved_in_product_id_order_whatever_the_line_order(
    bus: CommandBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One lock order for product rows everywhere, so two transactions never wait on
    each other's rows in a circle."""
    ids = sorted([await product(bus, f"P{n}", 9) for n in range(4)])
    ada = await customer(bus)
    touched: list[str] = []

    def spy(method: str) -> None:
        original = getattr(Stock, method)

        async def recorded(self: Stock, product_id: str, quantity: int) -> Any:
            touched.append(product_id)
            return await original(self, product_id, quantity)

        monkeypatch.setattr(Stock, method, recorded)

    for method in ("reserve", "release", "ship"):
        spy(method)
    backwards = [(p, 1) for p in reversed(ids)]
    first = await bus.execute(order(ada, *backwards))
    second = await bus.execute(order(ada, *backwards))
    await bus.execute(CancelOrder(first.id or "", "no"))
    await bus.execute(ShipOrder(second.id or "", "T-1"))
    assert touched == ids * 4
