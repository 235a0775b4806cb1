"""Loading and saving aggregates as rows, with an optimistic version check on save."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.aggregate import Aggregate
from domain.customers import Address, Customer, email_key
from domain.errors import VersionConflict
from domain.events import OrderPlaced
from domain.model import customers, metadata, order_lines, orders, outbox, products
from domain.orders import Order, OrderLine, OrderStatus
from domain.products import Product, ProductStatus

A = TypeVar("A", bound=Aggregate)


class Repository(Generic[A]):
    """Tracks the aggregates a unit of work touched and the version each was loaded at.

    Defining a subclass registers it: the unit of work gives every command one of each
    (``uow[ProductRepository]``) and saves their aggregates in the order of their
    tables' foreign keys (:func:`registered`), so a new repository is its class alone.
    """

    table: ClassVar[sa.Table]
    _registered: ClassVar[list[type[Repository[Any]]]] = []
    _in_order: ClassVar[tuple[type[Repository[Any]], ...] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "table" in cls.__dict__:
            Repository._registered.append(cls)
            Repository._in_order = None

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.seen: dict[str, A] = {}
        self._loaded_versions: dict[str, int] = {}

    def add(self, aggregate: A) -> None:
        self.seen[aggregate.id] = aggregate

    async def get(self, aggregate_id: str) -> A | None:
        """Loads and locks the aggregate (``FOR UPDATE`` where the database has it)."""
        return await self._load_one(self.table.c.id == aggregate_id)

    async def save(self, aggregate: A) -> None:
        """Writes an aggregate that raised events; fails if someone else changed it meanwhile."""
        row = self.to_row(aggregate)
        loaded = self._loaded_versions.get(aggregate.id)
        if loaded is None:
            await self.conn.execute(self.table.insert().values(**row))
            return
        key = self.table.c.id
        result = await self.conn.execute(
            self.table.update()
            .where(key == aggregate.id, self.table.c.version == loaded)
            .values(**row)
        )
        if result.rowcount != 1:
            raise VersionConflict(f"{aggregate.aggregate_type} {aggregate.id} changed meanwhile")

    async def _exists(self, condition: sa.ColumnElement[bool]) -> bool:
        stmt = sa.select(sa.literal(1)).where(condition)
        return (await self.conn.execute(stmt)).first() is not None

    async def _load_one(self, condition: sa.ColumnElement[bool]) -> A | None:
        stmt = sa.select(self.table).where(condition).with_for_update()
        row = (await self.conn.execute(stmt)).mappings().first()
        if row is None:
            return None
        aggregate = self.from_row(row)
        self._loaded_versions[aggregate.id] = aggregate.version
        self.seen[aggregate.id] = aggregate
        return aggregate

    def to_row(self, aggregate: A) -> dict[str, Any]:
        raise NotImplementedError

    def from_row(self, row: Any) -> A:
        raise NotImplementedError


def registered() -> tuple[type[Repository[Any]], ...]:
    """Every repository, referenced tables first (``metadata.sorted_tables``): customers
    before orders, products before order lines, so saving in this order never inserts
    a row before the row it refers to. Sorted once per set of repositories: every
    command asks."""
    if Repository._in_order is None:
        place = {table: n for n, table in enumerate(metadata.sorted_tables)}
        Repository._in_order = tuple(
            sorted(Repository._registered, key=lambda cls: place[cls.table])
        )
    return Repository._in_order


class ProductRepository(Repository[Product]):
    table = products

    async def get_many(self, product_ids: set[str]) -> dict[str, Product]:
        """Loads and locks the products, in id order so concurrent orders never deadlock."""
        found = {}
        for product_id in sorted(product_ids):
            product = await self.get(product_id)
            if product is not None:
                found[product_id] = product
        return found

    async def sku_exists(self, sku: str) -> bool:
        return await self._exists(products.c.sku == sku)

    def to_row(self, p: Product) -> dict[str, Any]:
        return {
            "id": p.id,
            "sku": p.sku,
            "name": p.name,
            "description": p.description,
            "category": p.category,
            "price_cents": p.price_cents,
            "status": p.status.value,
            "stock_on_hand": p.stock_on_hand,
            "stock_reserved": p.stock_reserved,
            "version": p.version,
            "created_at": p.created_at,
            "updated_at": p.updated_at,
        }

    def from_row(self, row: Any) -> Product:
        return Product(
            id=row["id"],
            sku=row["sku"],
            name=row["name"],
            description=row["description"],
            category=row["category"],
            price_cents=row["price_cents"],
            status=ProductStatus(row["status"]),
            stock_on_hand=row["stock_on_hand"],
            stock_reserved=row["stock_reserved"],
            version=row["version"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


class CustomerRepository(Repository[Customer]):
    table = customers

    async def email_exists(self, email: str) -> bool:
        return await self._exists(customers.c.email_key == email_key(email))

    def to_row(self, c: Customer) -> dict[str, Any]:
        return {
            "id": c.id,
            "email": c.email,
            "email_key": email_key(c.email),
            "name": c.name,
            "address": c.address.to_data(),
            "version": c.version,
            "registered_at": c.registered_at,
        }

    def from_row(self, row: Any) -> Customer:
        return Customer(
            id=row["id"],
            email=row["email"],
            name=row["name"],
            address=Address.from_data(row["address"]),
            version=row["version"],
            registered_at=row["registered_at"],
        )


class OrderRepository(Repository[Order]):
    table = orders

    async def count_for_customer(self, customer_id: str) -> int:
        """How many orders the customer has placed (ix_orders_customer_placed)."""
        stmt = sa.select(sa.func.count()).where(orders.c.customer_id == customer_id)
        return int((await self.conn.execute(stmt)).scalar_one())

    async def get(self, order_id: str) -> Order | None:
        order = await super().get(order_id)
        if order is not None:
            # The number its OrderPlaced event (the order's version 1) gave it.
            placed = sa.select(outbox.c.data).where(
                outbox.c.aggregate_id == order_id, outbox.c.aggregate_version == 1
            )
            data = (await self.conn.execute(placed)).scalar_one_or_none()
            if data is not None:
                order.number = OrderPlaced.from_data(data).customer_order_number
            stmt = (
                sa.select(order_lines)
                .where(order_lines.c.order_id == order_id)
                .order_by(order_lines.c.line_no)
            )
            rows = (await self.conn.execute(stmt)).mappings()
            order.lines = [
                OrderLine(
                    r["product_id"],
                    r["sku"],
                    r["product_name"],
                    r["quantity"],
                    r["unit_price_cents"],
                )
                for r in rows
            ]
        return order

    async def save(self, order: Order) -> None:
        is_new = order.id not in self._loaded_versions
        await super().save(order)
        if is_new:
            await self.conn.execute(
                order_lines.insert(),
                [
                    {
                        "order_id": order.id,
                        "line_no": n,
                        "product_id": line.product_id,
                        "sku": line.sku,
                        "product_name": line.product_name,
                        "quantity": line.quantity,
                        "unit_price_cents": line.unit_price_cents,
                    }
                    for n, line in enumerate(order.lines)
                ],
            )

    def to_row(self, o: Order) -> dict[str, Any]:
        return {
            "id": o.id,
            "customer_id": o.customer_id,
            "status": o.status.value,
            "total_cents": o.total_cents,
            "shipping_address": o.shipping_address.to_data(),
            "placed_at": o.placed_at,
            "shipped_at": o.shipped_at,
            "tracking_number": o.tracking_number,
            "cancelled_at": o.cancelled_at,
            "cancel_reason": o.cancel_reason,
            "version": o.version,
        }

    def from_row(self, row: Any) -> Order:
        return Order(
            id=row["id"],
            customer_id=row["customer_id"],
            status=OrderStatus(row["status"]),
            shipping_address=Address.from_data(row["shipping_address"]),
            placed_at=row["placed_at"],
            shipped_at=row["shipped_at"],
            tracking_number=row["tracking_number"],
            cancelled_at=row["cancelled_at"],
            cancel_reason=row["cancel_reason"],
            version=row["version"],
        )


class Stock:
    """Stock movements as conditional updates, so no two orders can take the same unit.

    Each statement re-checks its condition in the database as it writes; a lost race
    touches no row instead of overselling.
    """

    def __init__(self, conn: AsyncConnection, before_write: Callable[[], Awaitable[None]]) -> None:
        self.conn = conn
        self.before_write = before_write
        """Called before each statement that may change rows (the unit of work opens the
        command's savepoint there)."""

    async def reserve(self, product_id: str, quantity: int) -> bool:
        c = products.c
        await self.before_write()
        result = await self.conn.execute(
            products.update()
            .where(
                c.id == product_id,
                c.status == ProductStatus.ACTIVE.value,
                c.stock_on_hand - c.stock_reserved >= quantity,
            )
            .values(stock_reserved=c.stock_reserved + quantity)
        )
        return result.rowcount == 1

    async def release(self, product_id: str, quantity: int) -> None:
        c = products.c
        await self._move(product_id, quantity, stock_reserved=c.stock_reserved - quantity)

    async def ship(self, product_id: str, quantity: int) -> None:
        c = products.c
        await self._move(
            product_id,
            quantity,
            stock_on_hand=c.stock_on_hand - quantity,
            stock_reserved=c.stock_reserved - quantity,
        )

    async def _move(self, product_id: str, quantity: int, **values: Any) -> None:
        c = products.c
        await self.before_write()
        result = await self.conn.execute(
            products.update()
            .where(c.id == product_id, c.stock_reserved >= quantity)
            .values(**values)
        )
        if result.rowcount != 1:
            raise RuntimeError(f"product {product_id} has fewer than {quantity} units reserved")
