"""A customer's wish list: products kept for later, at most :data:`MAX_ITEMS`.

One list per customer, created by its first item. Its aggregate id is derived from
the customer's id (:func:`wishlist_id`), not the customer id itself: the outbox holds
one event per aggregate id and version, and the customer's own events use that id.

Rules, and why:

- the customer must exist (``NOT_FOUND`` on ``customerId``); so must a product being
  added (``NOT_FOUND`` on ``productId``), and it must be ACTIVE (``INVALID_STATE``),
  as for ordering it;
- a full list refuses another product (``INVALID_STATE``: remove one first);
- adding a product that is on the list, or removing one that is not, changes nothing
  and succeeds without an event: a client retrying, or two tabs doing the same, gets
  the state it asked for rather than an error to handle.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.aggregate import Aggregate
from domain.commands import Command
from domain.errors import InvalidState, NotFound, Problems
from domain.events import DomainEvent
from domain.handlers import handles
from domain.model import UTCDateTime, metadata
from domain.products import Product, ProductStatus
from domain.repositories import CustomerRepository, ProductRepository, Repository

if TYPE_CHECKING:
    from domain.uow import UnitOfWork

MAX_ITEMS = 100
_NAMESPACE = uuid.UUID("5d1c0f3e-8f5a-4a8e-9b1e-2f6f0e9a7c11")


def wishlist_id(customer_id: str) -> str:
    """The id of the customer's wish list: the same for the same customer, everywhere."""
    return str(uuid.uuid5(_NAMESPACE, customer_id))


# --- commands and events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddToWishlist(Command):
    customer_id: str
    product_id: str


@dataclass(frozen=True, slots=True)
class RemoveFromWishlist(Command):
    customer_id: str
    product_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WishlistItemAdded(DomainEvent):
    """The product's SKU and name as they were when it was added."""

    customer_id: str
    product_id: str
    sku: str
    product_name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WishlistItemRemoved(DomainEvent):
    customer_id: str
    product_id: str


# --- the aggregate -----------------------------------------------------------------------


@dataclass(kw_only=True)
class Wishlist(Aggregate):
    aggregate_type = "Wishlist"

    customer_id: str
    items: dict[str, datetime] = field(default_factory=dict)
    """When each product on the list was added, by product id."""

    @classmethod
    def empty(cls, customer_id: str) -> Wishlist:
        return cls(id=wishlist_id(customer_id), customer_id=customer_id)

    def add(self, product: Product, *, now: datetime) -> None:
        """Puts ``product`` on the list; a no-op if it is there already."""
        if product.id in self.items:
            return
        problems = Problems()
        if product.status is not ProductStatus.ACTIVE:
            problems.add(InvalidState(f"product {product.sku} is discontinued", "productId"))
        if len(self.items) >= MAX_ITEMS:
            problems.add(
                InvalidState(f"a wish list holds at most {MAX_ITEMS} products: remove one first")
            )
        problems.raise_if_any()
        self.items[product.id] = now
        self.raise_event(
            WishlistItemAdded(
                customer_id=self.customer_id,
                product_id=product.id,
                sku=product.sku,
                product_name=product.name,
            )
        )

    def remove(self, product_id: str) -> None:
        """Takes the product off the list; a no-op if it is not on it."""
        if self.items.pop(product_id, None) is None:
            return
        self.raise_event(WishlistItemRemoved(customer_id=self.customer_id, product_id=product_id))


# --- storage -----------------------------------------------------------------------------

# One row per customer's list (its id derived from the customer's, see wishlist_id).
wishlists = sa.Table(
    "wishlists",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("customer_id", sa.String(36), sa.ForeignKey("customers.id"), nullable=False,
              unique=True),
    sa.Column("version", sa.Integer, nullable=False),
)  # fmt: skip

wishlist_items = sa.Table(
    "wishlist_items",
    metadata,
    sa.Column("wishlist_id", sa.String(36), sa.ForeignKey("wishlists.id"), primary_key=True),
    sa.Column("product_id", sa.String(36), sa.ForeignKey("products.id"), primary_key=True),
    sa.Column("added_at", UTCDateTime, nullable=False),
)


class WishlistRepository(Repository[Wishlist]):
    table = wishlists

    def __init__(self, conn: AsyncConnection) -> None:
        super().__init__(conn)
        # Each list's items as loaded, so that saving writes only what changed.
        self._loaded: dict[str, frozenset[str]] = {}

    async def for_customer(self, customer_id: str) -> Wishlist:
        """The customer's list (locked), or a new empty one that is saved with its first item."""
        found = await self.get(wishlist_id(customer_id))
        if found is not None:
            return found
        wishlist = Wishlist.empty(customer_id)
        self.add(wishlist)
        return wishlist

    async def get(self, aggregate_id: str) -> Wishlist | None:
        wishlist = await super().get(aggregate_id)
        if wishlist is not None:
            stmt = sa.select(wishlist_items.c.product_id, wishlist_items.c.added_at).where(
                wishlist_items.c.wishlist_id == aggregate_id
            )
            rows = await self.conn.execute(stmt)
            wishlist.items = {row.product_id: row.added_at for row in rows}
            self._loaded[aggregate_id] = frozenset(wishlist.items)
        return wishlist

    async def save(self, wishlist: Wishlist) -> None:
        """Saves the list's row (version checked), then only the items added or removed.

        Rewriting every item would have PostgreSQL check each one's foreign key, locking
        every product on the list (``FOR KEY SHARE``) while the command holds the added
        product ``FOR UPDATE``: two lists sharing products, or a list and an order, would
        then wait for each other in a circle.
        """
        await super().save(wishlist)
        items = wishlist_items.c
        before = self._loaded.get(wishlist.id, frozenset())
        if removed := before - wishlist.items.keys():
            await self.conn.execute(
                wishlist_items.delete().where(
                    items.wishlist_id == wishlist.id, items.product_id.in_(sorted(removed))
                )
            )
        if added := wishlist.items.keys() - before:
            await self.conn.execute(
                wishlist_items.insert(),
                [
                    {"wishlist_id": wishlist.id, "product_id": product_id,
                     "added_at": wishlist.items[product_id]}
                    for product_id in sorted(added)
                ],
            )  # fmt: skip
        self._loaded[wishlist.id] = frozenset(wishlist.items)

    def to_row(self, w: Wishlist) -> dict[str, Any]:
        return {"id": w.id, "customer_id": w.customer_id, "version": w.version}

    def from_row(self, row: Any) -> Wishlist:
        return Wishlist(id=row["id"], customer_id=row["customer_id"], version=row["version"])


# --- handlers ------------------------------------------------------------------------------


async def _customer_exists(uow: UnitOfWork, customer_id: str, problems: Problems) -> None:
    if await uow[CustomerRepository].get(customer_id) is None:
        problems.add(NotFound(f"no customer with id {customer_id}", "customerId"))


@handles(AddToWishlist)
async def add_to_wishlist(cmd: AddToWishlist, uow: UnitOfWork) -> Aggregate:
    """Locks the customer, then the product, then the list: the order placing an order
    locks rows in, so the two never wait for each other in a circle."""
    problems = Problems()
    await _customer_exists(uow, cmd.customer_id, problems)
    product = await uow[ProductRepository].get(cmd.product_id)
    if product is None:
        problems.add(NotFound(f"no product with id {cmd.product_id}", "productId"))
    problems.raise_if_any()
    assert product is not None
    wishlist = await uow[WishlistRepository].for_customer(cmd.customer_id)
    wishlist.add(product, now=uow.now)
    return wishlist


@handles(RemoveFromWishlist)
async def remove_from_wishlist(cmd: RemoveFromWishlist, uow: UnitOfWork) -> Aggregate:
    problems = Problems()
    await _customer_exists(uow, cmd.customer_id, problems)
    problems.raise_if_any()
    wishlist = await uow[WishlistRepository].for_customer(cmd.customer_id)
    wishlist.remove(cmd.product_id)
    return wishlist
