"""Wish lists on real stores: the rules in the write model, the read model the relay builds."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
from pymongo.asynchronous.database import AsyncDatabase
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.commands import DiscontinueProduct
from domain.errors import DomainError
from domain.wishlists import (
    AddToWishlist,
    RemoveFromWishlist,
    wishlist_id,
    wishlist_items,
    wishlists,
)
from projections.wishlist import find_wishlist
from tests.integration.shop import Shop, snapshot

Db = AsyncDatabase[dict[str, Any]]

pytestmark = pytest.mark.usefixtures("guard_mode")


async def items(db: Db, customer_id: str) -> list[str]:
    return [item["productId"] for item in (await find_wishlist(db, customer_id))["items"]]


async def test_a_list_shows_what_was_added_newest_first_without_what_was_removed(
    engine: AsyncEngine, db: Db
) -> None:
    shop = Shop(engine, db)
    mug, cup, pot = [await shop.product(sku) for sku in ("MUG", "CUP", "POT")]
    ada = await shop.customer()
    for product in (mug, cup, pot):
        await shop.do(AddToWishlist(ada, product))
    await shop.do(RemoveFromWishlist(ada, cup))
    await shop.sync()
    assert await items(db, ada) == [pot, mug]
    document = await find_wishlist(db, ada)
    assert document["items"][0] | {"addedAt": None} == {
        "productId": pot, "sku": "POT", "productName": "POT name", "addedAt": None,
        "addedVersion": document["items"][0]["addedVersion"],
    }  # fmt: skip
    async with engine.connect() as conn:
        rows = await conn.execute(sa.select(wishlist_items.c.product_id))
        assert {r for (r,) in rows} == {mug, pot}
        version = await conn.scalar(sa.select(wishlists.c.version))
    assert version == 4


async def test_adding_twice_or_removing_what_is_not_there_succeeds_and_writes_nothing(
    engine: AsyncEngine, db: Db
) -> None:
    shop = Shop(engine, db)
    mug, ada = await shop.product("MUG"), await shop.customer()
    added = await shop.bus.execute(AddToWishlist(ada, mug))
    again = await shop.bus.execute(AddToWishlist(ada, mug))
    absent = await shop.bus.execute(RemoveFromWishlist(ada, "no-such-product"))
    assert again.aggregate_version == absent.aggregate_version == added.aggregate_version == 1
    assert again.version == absent.version == added.version
    assert again.id == wishlist_id(ada)


async def test_a_missing_customer_or_product_is_not_found_and_a_discontinued_one_refused(
    engine: AsyncEngine, db: Db
) -> None:
    shop = Shop(engine, db)
    mug, ada = await shop.product("MUG"), await shop.customer()
    with pytest.raises(DomainError) as refused:
        await shop.bus.execute(AddToWishlist("no-such-customer", "no-such-product"))
    assert [(p.code, p.field) for p in refused.value.problems] == [
        ("NOT_FOUND", "customerId"), ("NOT_FOUND", "productId"),
    ]  # fmt: skip
    with pytest.raises(DomainError) as refused:
        await shop.bus.execute(RemoveFromWishlist("no-such-customer", mug))
    assert [(p.code, p.field) for p in refused.value.problems] == [("NOT_FOUND", "customerId")]
    await shop.do(DiscontinueProduct(mug))
    with pytest.raises(DomainError) as refused:
        await shop.bus.execute(AddToWishlist(ada, mug))
    assert [(p.code, p.field) for p in refused.value.problems] == [("INVALID_STATE", "productId")]
    await shop.sync()
    assert await find_wishlist(db, ada) == {"customerId": ada, "items": [], "version": 0}


async def test_two_first_items_added_at_once_both_land_on_one_list(
    engine: AsyncEngine, db: Db
) -> None:
    shop = Shop(engine, db)
    mug, cup, ada = await shop.product("MUG"), await shop.product("CUP"), await shop.customer()
    await asyncio.gather(
        shop.bus.execute(AddToWishlist(ada, mug)), shop.bus.execute(AddToWishlist(ada, cup))
    )
    await shop.sync()
    assert sorted(await items(db, ada)) == sorted([mug, cup])


async def test_replaying_the_log_changes_no_wish_list(engine: AsyncEngine, db: Db) -> None:
    shop = Shop(engine, db)
    mug, cup, ada = await shop.product("MUG"), await shop.product("CUP"), await shop.customer()
    await shop.do(AddToWishlist(ada, mug))
    await shop.do(AddToWishlist(ada, cup))
    await shop.do(RemoveFromWishlist(ada, mug))
    await shop.sync()
    before = (await snapshot(db))["wishlists"]
    assert len(before) == 1
    for name in shop.relay.positions:
        shop.relay.positions[name] = 0
    await shop.sync()
    assert (await snapshot(db))["wishlists"] == before
