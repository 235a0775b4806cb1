"""Wish list rules (the aggregate) and its projector (pure, version-guarded)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pymongo import InsertOne, UpdateOne

from domain.errors import InvalidState, Rejected
from domain.events import RecordedEvent
from domain.products import Product, ProductStatus
from domain.wishlists import (
    MAX_ITEMS,
    Wishlist,
    WishlistItemAdded,
    WishlistItemRemoved,
    wishlist_id,
)
from projections.projection import coalesce
from projections.wishlist import COLLECTION, WishlistsProjection

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def product(n: int = 1, status: ProductStatus = ProductStatus.ACTIVE) -> Product:
    return Product(id=f"p{n}", sku=f"SKU-{n}", name=f"Thing {n}", description="",
                   category="c", price_cents=100, status=status, created_at=NOW,
                   updated_at=NOW)  # fmt: skip


def test_the_first_product_raises_an_event_with_its_sku_and_name() -> None:
    wishlist = Wishlist.empty("c1")
    wishlist.add(product(), now=NOW)
    [event] = wishlist.events
    assert (event.type, event.aggregate_id, event.aggregate_version) == (
        "WishlistItemAdded", wishlist_id("c1"), 1
    )  # fmt: skip
    assert event.data == {"customerId": "c1", "productId": "p1", "sku": "SKU-1",
                          "productName": "Thing 1"}  # fmt: skip


def test_the_list_id_is_the_customers_own_and_not_the_customer_id() -> None:
    assert wishlist_id("c1") == wishlist_id("c1") != wishlist_id("c2")
    assert wishlist_id("c1") != "c1"


def test_adding_a_product_already_on_the_list_changes_nothing() -> None:
    wishlist = Wishlist.empty("c1")
    wishlist.add(product(), now=NOW)
    wishlist.add(product(), now=NOW)
    assert len(wishlist.events) == 1
    assert wishlist.version == 1


def test_removing_a_product_not_on_the_list_changes_nothing() -> None:
    wishlist = Wishlist.empty("c1")
    wishlist.remove("p1")
    assert wishlist.events == []
    assert wishlist.version == 0


def test_removing_a_product_on_the_list_raises_an_event() -> None:
    wishlist = Wishlist.empty("c1")
    wishlist.add(product(), now=NOW)
    wishlist.remove("p1")
    assert [e.type for e in wishlist.events] == ["WishlistItemAdded", "WishlistItemRemoved"]
    assert wishlist.items == {}


def test_a_full_list_refuses_another_product() -> None:
    wishlist = Wishlist.empty("c1")
    for n in range(MAX_ITEMS):
        wishlist.add(product(n), now=NOW)
    with pytest.raises(InvalidState, match=f"at most {MAX_ITEMS}"):
        wishlist.add(product(MAX_ITEMS), now=NOW)
    assert len(wishlist.items) == MAX_ITEMS
    wishlist.add(product(0), now=NOW)  # one on the list already: still a no-op


def test_a_discontinued_product_cannot_be_added() -> None:
    wishlist = Wishlist.empty("c1")
    with pytest.raises(InvalidState, match="discontinued") as refused:
        wishlist.add(product(status=ProductStatus.DISCONTINUED), now=NOW)
    assert refused.value.field == "productId"
    assert wishlist.events == []


def test_a_full_list_and_a_discontinued_product_are_reported_together() -> None:
    wishlist = Wishlist.empty("c1")
    for n in range(MAX_ITEMS):
        wishlist.add(product(n), now=NOW)
    with pytest.raises(Rejected) as refused:
        wishlist.add(product(999, ProductStatus.DISCONTINUED), now=NOW)
    assert [p.field for p in refused.value.problems] == ["productId", None]


# --- the projector ------------------------------------------------------------------------


def recorded(position: int, event: WishlistItemAdded | WishlistItemRemoved) -> RecordedEvent:
    return RecordedEvent(position, f"e{position}", event.type_name(), "Wishlist",
                         wishlist_id("c1"), position, event.to_data(), NOW)  # fmt: skip


ADDED = recorded(
    7, WishlistItemAdded(customer_id="c1", product_id="p1", sku="SKU-1", product_name="Mug")
)
REMOVED = recorded(8, WishlistItemRemoved(customer_id="c1", product_id="p1"))


def test_adding_makes_sure_the_list_exists_then_sets_the_item_guarded() -> None:
    shell, item = WishlistsProjection().project(ADDED)
    assert (shell.collection, shell.key, shell.shell) == (COLLECTION, "c1", True)
    assert shell.operation == InsertOne({"_id": "c1", "customerId": "c1", "items": {},
                                         "version": 0})  # fmt: skip
    assert item.operation == UpdateOne(
        {"_id": "c1", "version": {"$lt": 7}},
        {"$set": {"items.p1": {"productId": "p1", "sku": "SKU-1", "productName": "Mug",
                               "addedAt": NOW, "addedVersion": 7}, "version": 7}},
    )  # fmt: skip


def test_removing_unsets_the_item_guarded() -> None:
    [write] = WishlistsProjection().project(REMOVED)
    assert write.operation == UpdateOne(
        {"_id": "c1", "version": {"$lt": 8}},
        {"$unset": {"items.p1": ""}, "$set": {"version": 8}},
    )


def test_an_add_then_a_remove_of_the_same_item_in_one_batch_are_not_merged_into_one() -> None:
    writes = [w for e in (ADDED, REMOVED) for w in WishlistsProjection().project(e)]
    assert len(coalesce(writes)) == 3


def test_events_of_other_types_write_nothing() -> None:
    other = RecordedEvent(9, "e9", "ProductDiscontinued", "Product", "p1", 2, {}, NOW)
    assert WishlistsProjection().project(other) == []
