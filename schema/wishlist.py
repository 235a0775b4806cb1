"""Wish lists in GraphQL: the ``wishlist`` query and the two mutations that change one.

Their root fields join the served ``Query`` and ``Mutation`` in ``schema.build``, and
so do their rows of the policy table (:data:`POLICIES`): a customer its own list,
admins read any.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import strawberry

from domain.wishlists import AddToWishlist, RemoveFromWishlist
from projections import wishlist as wishlist_views
from schema import keys
from schema.consistency import wait_for
from schema.context import Info
from schema.mutations import execute
from schema.policy import OwnCustomer, Policy
from schema.scalars import Version
from schema.types import CommandResult, given


@strawberry.type
class WishlistItem:
    product_id: strawberry.ID
    sku: str = strawberry.field(description="The product's SKU when it was added.")
    product_name: str = strawberry.field(description="The product's name when it was added.")
    added_at: datetime

    @classmethod
    def from_document(cls, d: dict[str, Any]) -> WishlistItem:
        return cls(
            product_id=strawberry.ID(d["productId"]),
            sku=d["sku"],
            product_name=d["productName"],
            added_at=d["addedAt"],
        )


@strawberry.type(description="A customer's wish list: products kept for later, newest first.")
class Wishlist:
    customer_id: strawberry.ID
    items: list[WishlistItem]
    item_count: int
    version: Version = strawberry.field(description="0 until the first product is added.")

    @classmethod
    def from_document(cls, d: dict[str, Any]) -> Wishlist:
        items = [WishlistItem.from_document(item) for item in d["items"]]
        return cls(
            customer_id=strawberry.ID(d["customerId"]),
            items=items,
            item_count=len(items),
            version=Version(d["version"]),
        )


@strawberry.type
class WishlistQuery:
    @strawberry.field
    async def wishlist(
        self,
        info: Info,
        customer_id: strawberry.ID,
        min_version: Version | None = strawberry.UNSET,
    ) -> Wishlist:
        """The customer's wish list; an empty one (version 0) until they add a product."""
        key = keys.document_id(customer_id, "customerId")
        await wait_for(info, wishlist_views.NAME, given(min_version))
        if key is None:
            return Wishlist(customer_id=customer_id, items=[], item_count=0, version=Version(0))
        document = await wishlist_views.find_wishlist(info.context.db, key)
        return Wishlist.from_document(document)


@strawberry.type
class WishlistMutation:
    @strawberry.mutation
    async def add_to_wishlist(
        self,
        info: Info,
        customer_id: strawberry.ID,
        product_id: strawberry.ID,
        idempotency_key: str | None = strawberry.UNSET,
    ) -> CommandResult:
        """Adding a product already on the list changes nothing; a list holds at most
        ``domain.wishlists.MAX_ITEMS`` products."""
        command = AddToWishlist(customer_id=customer_id, product_id=product_id)
        return await execute(info, command, idempotency_key)

    @strawberry.mutation
    async def remove_from_wishlist(
        self,
        info: Info,
        customer_id: strawberry.ID,
        product_id: strawberry.ID,
        idempotency_key: str | None = strawberry.UNSET,
    ) -> CommandResult:
        """Removing a product that is not on the list changes nothing."""
        command = RemoveFromWishlist(customer_id=customer_id, product_id=product_id)
        return await execute(info, command, idempotency_key)


# A wish list is the customer's to change; admins may read any.
POLICIES: Mapping[str, Policy] = {
    "Query.wishlist": OwnCustomer("customer_id"),
    "Mutation.addToWishlist": OwnCustomer("customer_id", admins=False),
    "Mutation.removeFromWishlist": OwnCustomer("customer_id", admins=False),
}
