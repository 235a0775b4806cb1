"""Command handlers: plain functions of (command, unit of work), registered in HANDLERS.

Each returns the aggregate it created or changed; the bus turns that into the
command's outcome. The core commands' handlers are listed here; a feature module
registers its own with :func:`handles`, so building one of its commands (which
imports it) registers the handler too, and :func:`every_handler` imports them all.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import domain
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
from domain.customers import Address, Customer, check_name
from domain.errors import (
    Duplicate,
    InsufficientStock,
    InvalidState,
    NotFound,
    Problems,
)
from domain.orders import Order, OrderLine, check_lines, check_reason, check_tracking_number
from domain.products import (
    Product,
    ProductStatus,
    check_price,
    check_restock,
    check_update,
    normalise_sku,
)
from domain.repositories import (
    A,
    CustomerRepository,
    OrderRepository,
    ProductRepository,
    Repository,
)
from domain.uow import UnitOfWork

Handler = Callable[[Any, UnitOfWork], Awaitable[Aggregate]]
C = TypeVar("C", bound=Command)
CommandHandler = Callable[[C, UnitOfWork], Awaitable[Aggregate]]
InputCheck = Callable[[Problems], object]


async def create_product(cmd: CreateProduct, uow: UnitOfWork) -> Aggregate:
    """Checks the SKU's uniqueness first, so a taken SKU is reported with the other problems."""
    problems = Problems()
    sku = normalise_sku(cmd.sku)
    if await uow[ProductRepository].sku_exists(sku):
        problems.add(Duplicate(f"a product with SKU {sku} exists already", "sku"))
    product = Product.create(
        id=str(uuid.uuid4()),
        sku=sku,
        name=cmd.name,
        description=cmd.description,
        category=cmd.category,
        price_cents=cmd.price_cents,
        initial_stock=cmd.initial_stock,
        now=uow.now,
        problems=problems,
    )
    uow[ProductRepository].add(product)
    return product


async def _existing(
    repository: Repository[A],
    aggregate_id: str,
    what: str,
    check_input: InputCheck,
    visible: Callable[[A], bool] = lambda _: True,
) -> A:
    """The aggregate; if it is missing (or not ``visible`` to the caller: the same answer),
    ``NOT_FOUND`` with whatever is wrong with the input.

    Given the aggregate, its own method checks the input (and the state) together.
    """
    aggregate = await repository.get(aggregate_id)
    if aggregate is not None and visible(aggregate):
        return aggregate
    problems = Problems()
    problems.add(NotFound(f"no {what} with id {aggregate_id}", "id"))
    check_input(problems)
    problems.raise_if_any()
    raise AssertionError("unreachable: a problem was added")


async def _product(uow: UnitOfWork, product_id: str, check_input: InputCheck) -> Product:
    return await _existing(uow[ProductRepository], product_id, "product", check_input)


def _nothing_to_check(problems: Problems) -> None:
    return None


async def update_product(cmd: UpdateProduct, uow: UnitOfWork) -> Aggregate:
    check = partial(check_update, name=cmd.name, description=cmd.description,
                    category=cmd.category)  # fmt: skip
    product = await _product(uow, cmd.product_id, check)
    product.update_details(
        name=cmd.name,
        description=cmd.description,
        category=cmd.category,
        expected_version=cmd.expected_version,
        now=uow.now,
    )
    return product


async def change_product_price(cmd: ChangeProductPrice, uow: UnitOfWork) -> Aggregate:
    product = await _product(uow, cmd.product_id, partial(check_price, price_cents=cmd.price_cents))
    product.change_price(cmd.price_cents, expected_version=cmd.expected_version, now=uow.now)
    return product


async def restock_product(cmd: RestockProduct, uow: UnitOfWork) -> Aggregate:
    product = await _product(uow, cmd.product_id, partial(check_restock, quantity=cmd.quantity))
    product.restock(cmd.quantity, now=uow.now)
    return product


async def discontinue_product(cmd: DiscontinueProduct, uow: UnitOfWork) -> Aggregate:
    product = await _product(uow, cmd.product_id, _nothing_to_check)
    product.discontinue(expected_version=cmd.expected_version, now=uow.now)
    return product


async def register_customer(cmd: RegisterCustomer, uow: UnitOfWork) -> Aggregate:
    """Checks the email's uniqueness first, so a taken email is reported with the rest."""
    problems = Problems()
    if await uow[CustomerRepository].email_exists(cmd.email):
        problems.add(
            Duplicate(f"a customer with email {cmd.email.strip()} exists already", "email")
        )
    customer = Customer.register(
        id=str(uuid.uuid4()),
        email=cmd.email,
        name=cmd.name,
        address=cmd.address,
        now=uow.now,
        problems=problems,
    )
    uow[CustomerRepository].add(customer)
    return customer


async def _customer(uow: UnitOfWork, customer_id: str, check_input: InputCheck) -> Customer:
    return await _existing(uow[CustomerRepository], customer_id, "customer", check_input)


async def rename_customer(cmd: RenameCustomer, uow: UnitOfWork) -> Aggregate:
    customer = await _customer(uow, cmd.customer_id, partial(check_name, name=cmd.name))
    customer.rename(
        cmd.name,
        expected_version=cmd.expected_version,
        orders_placed=await uow[OrderRepository].count_for_customer(customer.id),
    )
    return customer


async def update_customer_address(cmd: UpdateCustomerAddress, uow: UnitOfWork) -> Aggregate:
    customer = await _customer(uow, cmd.customer_id, partial(Address.parse, cmd.address))
    customer.update_address(cmd.address, expected_version=cmd.expected_version)
    return customer


async def place_order(cmd: PlaceOrder, uow: UnitOfWork) -> Aggregate:
    """Checks every line, then reserves stock for all lines or none, at the current prices."""
    problems = Problems()
    customer = await uow[CustomerRepository].get(cmd.customer_id)
    if customer is None:
        problems.add(NotFound(f"no customer with id {cmd.customer_id}", "customerId"))
    valid_quantity = check_lines(problems, cmd.lines)
    address = (
        Address.parse(cmd.shipping_address, problems, "shippingAddress")
        if cmd.shipping_address is not None
        else None
    )
    products = await uow[ProductRepository].get_many({line.product_id for line in cmd.lines})
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
        # Unique and in commit order: loading the customer locked its row (FOR UPDATE on
        # PostgreSQL, one writer on SQLite), so orders of one customer are placed one at
        # a time (projections.history files orders by it).
        number=await uow[OrderRepository].count_for_customer(customer.id) + 1,
    )
    for i, ordered in _in_product_order(priced):
        if not await uow.stock.reserve(ordered.product_id, ordered.quantity):
            raise InsufficientStock(f"{ordered.sku} sold out meanwhile", f"lines.{i}.quantity")
    uow[OrderRepository].add(order)
    return order


def _in_product_order(lines: Sequence[OrderLine]) -> list[tuple[int, OrderLine]]:
    """The lines with their indexes, by product id: every transaction locks product rows
    in that one order, so two never wait for each other's rows in a circle."""
    return sorted(enumerate(lines), key=lambda numbered: numbered[1].product_id)


async def _order(uow: UnitOfWork, order_id: str, check_input: InputCheck) -> Order:
    return await _existing(uow[OrderRepository], order_id, "order", check_input)


async def cancel_order(cmd: CancelOrder, uow: UnitOfWork) -> Aggregate:
    check = partial(check_reason, reason=cmd.reason)
    customer = cmd.customer_id
    order = await _existing(
        uow[OrderRepository], cmd.order_id, "order", check,
        visible=lambda o: customer is None or o.customer_id == customer,
    )  # fmt: skip
    order.cancel(cmd.reason, expected_version=cmd.expected_version, now=uow.now)
    for _, line in _in_product_order(order.lines):
        await uow.stock.release(line.product_id, line.quantity)
    return order


async def ship_order(cmd: ShipOrder, uow: UnitOfWork) -> Aggregate:
    check = partial(check_tracking_number, tracking_number=cmd.tracking_number)
    order = await _order(uow, cmd.order_id, check)
    order.ship(cmd.tracking_number, expected_version=cmd.expected_version, now=uow.now)
    for _, line in _in_product_order(order.lines):
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


class DuplicateHandler(RuntimeError):
    """A command type was given a second handler."""


class UnhandledCommand(LookupError):
    """A command type has no handler: its module registers none, or was never imported."""

    def __init__(self, command: type[Command]) -> None:
        super().__init__(
            f"no handler is registered for {command.__module__}.{command.__qualname__}: "
            "decorate one with domain.handlers.handles in the command's module"
        )


def handles(command: type[C]) -> Callable[[CommandHandler[C]], CommandHandler[C]]:
    """Registers the decorated function as ``command``'s handler in :data:`HANDLERS`;
    a second handler for one command type raises :class:`DuplicateHandler`."""

    def register(handler: CommandHandler[C]) -> CommandHandler[C]:
        if (registered := HANDLERS.get(command)) is not None:
            raise DuplicateHandler(
                f"{command.__qualname__} is handled by {registered.__module__}."
                f"{registered.__qualname__} already; {handler.__module__}."
                f"{handler.__qualname__} cannot handle it too"
            )
        HANDLERS[command] = handler
        return handler

    return register


def every_handler() -> dict[type[Command], Handler]:
    """:data:`HANDLERS` with every feature module's handlers in it: what a bus serves
    whichever modules its process imported first."""
    domain.import_every_module()
    return HANDLERS
