"""Command handlers: plain functions of (command, unit of work), registered in HANDLERS.

Each returns the aggregate it created or changed; the bus turns that into the
command's outcome.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from domain.aggregate import Aggregate
from domain.commands import (
    CancelOrder,
    ChangeProductPrice,
    Command,
    CreateProduct,
    DiscontinueProduct,
    PlaceOrder,
    RegisterCustomer,
    RenameCustomer,
    RestockProduct,
    ShipOrder,
    UpdateCustomerAddress,
    UpdateProduct,
)
from domain.customers import Address, Customer
from domain.errors import (
    Duplicate,
    InsufficientStock,
    InvalidState,
    NotFound,
    Problems,
)
from domain.orders import Order, OrderLine, check_lines
from domain.products import Product, ProductStatus, normalise_sku
from domain.repositories import A, Repository
from domain.uow import UnitOfWork

Handler = Callable[[Any, UnitOfWork], Awaitable[Aggregate]]


async def create_product(cmd: CreateProduct, uow: UnitOfWork) -> Aggregate:
    sku = normalise_sku(cmd.sku)
    product = Product.create(
        id=str(uuid.uuid4()),
        sku=sku,
        name=cmd.name,
        description=cmd.description,
        category=cmd.category,
        price_cents=cmd.price_cents,
        initial_stock=cmd.initial_stock,
        now=uow.now,
    )
    if await uow.products.sku_exists(sku):
        raise Duplicate(f"a product with SKU {sku} exists already", "sku")
    uow.products.add(product)
    return product


async def _existing(repository: Repository[A], aggregate_id: str, what: str) -> A:
    aggregate = await repository.get(aggregate_id)
    if aggregate is None:
        raise NotFound(f"no {what} with id {aggregate_id}", "id")
    return aggregate


async def _product(uow: UnitOfWork, product_id: str) -> Product:
    return await _existing(uow.products, product_id, "product")


async def update_product(cmd: UpdateProduct, uow: UnitOfWork) -> Aggregate:
    product = await _product(uow, cmd.product_id)
    product.update_details(
        name=cmd.name,
        description=cmd.description,
        category=cmd.category,
        expected_version=cmd.expected_version,
        now=uow.now,
    )
    return product


async def change_product_price(cmd: ChangeProductPrice, uow: UnitOfWork) -> Aggregate:
    product = await _product(uow, cmd.product_id)
    product.change_price(cmd.price_cents, expected_version=cmd.expected_version, now=uow.now)
    return product


async def restock_product(cmd: RestockProduct, uow: UnitOfWork) -> Aggregate:
    product = await _product(uow, cmd.product_id)
    product.restock(cmd.quantity, now=uow.now)
    return product


async def discontinue_product(cmd: DiscontinueProduct, uow: UnitOfWork) -> Aggregate:
    product = await _product(uow, cmd.product_id)
    product.discontinue(expected_version=cmd.expected_version, now=uow.now)
    return product


async def register_customer(cmd: RegisterCustomer, uow: UnitOfWork) -> Aggregate:
    customer = Customer.register(
        id=str(uuid.uuid4()), email=cmd.email, name=cmd.name, address=cmd.address, now=uow.now
    )
    if await uow.customers.email_exists(customer.email):
        raise Duplicate(f"a customer with email {customer.email} exists already", "email")
    uow.customers.add(customer)
    return customer


async def _customer(uow: UnitOfWork, customer_id: str) -> Customer:
    return await _existing(uow.customers, customer_id, "customer")


async def rename_customer(cmd: RenameCustomer, uow: UnitOfWork) -> Aggregate:
    customer = await _customer(uow, cmd.customer_id)
    customer.rename(cmd.name, expected_version=cmd.expected_version)
    return customer


async def update_customer_address(cmd: UpdateCustomerAddress, uow: UnitOfWork) -> Aggregate:
    customer = await _customer(uow, cmd.customer_id)
    customer.update_address(cmd.address, expected_version=cmd.expected_version)
    return customer


async def place_order(cmd: PlaceOrder, uow: UnitOfWork) -> Aggregate:
    """Checks every line, then reserves stock for all lines or none, at the current prices."""
    problems = Problems()
    customer = await uow.customers.get(cmd.customer_id)
    if customer is None:
        problems.add(NotFound(f"no customer with id {cmd.customer_id}", "customerId"))
    valid_quantity = check_lines(problems, cmd.lines)
    address = (
        Address.parse(cmd.shipping_address, problems, "shippingAddress")
        if cmd.shipping_address is not None
        else None
    )
    products = await uow.products.get_many({line.product_id for line in cmd.lines})
    for i, line in enumerate(cmd.lines):
        product = products.get(line.product_id)
        if product is None:
            problems.add(NotFound(f"no product with id {line.product_id}", f"lines.{i}.productId"))
        elif product.status is not ProductStatus.ACTIVE:
            problems.add(
                InvalidState(f"product {product.sku} is discontinued", f"lines.{i}.productId")
            )
        elif i in valid_quantity and product.stock_available < line.quantity:
            problems.add(
                InsufficientStock(
                    f"only {product.stock_available} of {product.sku} available",
                    f"lines.{i}.quantity",
                )
            )
    problems.raise_if_any()
    assert customer is not None
    priced = [
        OrderLine(p.id, p.sku, p.name, request.quantity, p.price_cents)
        for request in cmd.lines
        for p in (products[request.product_id],)
    ]
    order = Order.place(
        id=str(uuid.uuid4()),
        customer=customer,
        lines=priced,
        shipping_address=address or customer.address,
        now=uow.now,
    )
    for i, ordered in enumerate(priced):
        if not await uow.stock.reserve(ordered.product_id, ordered.quantity):
            raise InsufficientStock(f"{ordered.sku} sold out meanwhile", f"lines.{i}.quantity")
    uow.orders.add(order)
    return order


async def _order(uow: UnitOfWork, order_id: str) -> Order:
    return await _existing(uow.orders, order_id, "order")


async def cancel_order(cmd: CancelOrder, uow: UnitOfWork) -> Aggregate:
    order = await _order(uow, cmd.order_id)
    order.cancel(cmd.reason, expected_version=cmd.expected_version, now=uow.now)
    for line in order.lines:
        await uow.stock.release(line.product_id, line.quantity)
    return order


async def ship_order(cmd: ShipOrder, uow: UnitOfWork) -> Aggregate:
    order = await _order(uow, cmd.order_id)
    order.ship(cmd.tracking_number, expected_version=cmd.expected_version, now=uow.now)
    for line in order.lines:
        await uow.stock.ship(line.product_id, line.quantity)
    return order


HANDLERS: dict[type[Command], Handler] = {
    CreateProduct: create_product,
    UpdateProduct: update_product,
    ChangeProductPrice: change_product_price,
    RestockProduct: restock_product,
    DiscontinueProduct: discontinue_product,
    RegisterCustomer: register_customer,
    RenameCustomer: rename_customer,
    UpdateCustomerAddress: update_customer_address,
    PlaceOrder: place_order,
    CancelOrder: cancel_order,
    ShipOrder: ship_order,
}
