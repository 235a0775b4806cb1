"""orderHistory in bucket documents: pages, one read for a first page, changes and renames
in every copy, and orders from before events carried numbers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase
from sqlalchemy.ext.asyncio import AsyncEngine

from domain import events as ev
from domain.commands import CancelOrder, RenameCustomer, ShipOrder
from domain.events import RecordedEvent
from projections import history, paging, readdb
from projections.history import BUCKET, OrderHistoryProjection
from projections.projection import coalesce
from projections.relay import apply_writes, prepare_collections
from tests.integration.shop import Shop

Db = AsyncDatabase[dict[str, Any]]

pytestmark = pytest.mark.usefixtures("guard_mode")


async def all_pages(db: Db, customer: str, size: int) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    after = None
    while True:
        page = await history.order_history(db, customer, size, after)
        seen += page.documents
        if not page.has_next_page:
            return seen
        after = page.cursors[-1]


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The keys read by ``readdb.find_by_id`` from now on."""
    keys: list[Any] = []
    find = readdb.find_by_id

    async def counted(db: Any, collection: str, key: Any) -> Any:
        keys.append(key)
        return await find(db, collection, key)

    monkeypatch.setattr(readdb, "find_by_id", counted)
    return keys


async def test_pages_of_every_size_walk_the_buckets_newest_first(
    engine: AsyncEngine, db: Db, reads: list[Any]
) -> None:
    shop = Shop(engine, db)
    mug, ada = await shop.product("MUG", stock=1000), await shop.customer()
    placed = [await shop.order(ada, (mug, 1)) for _ in range(3 * BUCKET + 5)]
    await shop.sync()
    newest_first = placed[::-1]
    for size in (1, 5, 20, BUCKET + 1, 100):
        assert [d["_id"] for d in await all_pages(db, ada, size)] == newest_first, size

    head = await db[history.COLLECTION].find_one({"_id": ada})
    assert head is not None
    assert (head["top"], head["bottom"], head["count"]) == (3, 0, 3 * BUCKET + 5)

    reads.clear()
    page = await history.order_history(db, ada, 20, None)
    assert [d["_id"] for d in page.documents] == newest_first[:20]
    # the head, then the three buckets a page of 20 may need, side by side
    assert reads == [ada, *(history.bucket_id(ada, k) for k in (3, 2, 1))]


async def test_status_changes_and_renames_reach_every_copy(engine: AsyncEngine, db: Db) -> None:
    shop = Shop(engine, db)
    mug, ada = await shop.product("MUG", stock=1000), await shop.customer()
    placed = [await shop.order(ada, (mug, 1)) for _ in range(2 * BUCKET + 3)]
    await shop.sync()
    # oldest: bucket 0, no longer in the head; newest: in the head and its bucket
    await shop.do(ShipOrder(placed[0], "T-OLD"))
    await shop.do(CancelOrder(placed[-1], "changed my mind"))
    await shop.do(ShipOrder(placed[BUCKET + 1], "T-MID"))
    await shop.do(RenameCustomer(ada, "Ada Lovelace"))
    later = await shop.order(ada, (mug, 1))
    await shop.sync()

    for size in (5, 100):
        pages = {d["_id"]: d for d in await all_pages(db, ada, size)}
        assert list(pages) == [later, *placed[::-1]]
        assert (pages[placed[0]]["status"], pages[placed[0]]["trackingNumber"]) == (
            "SHIPPED", "T-OLD"
        )  # fmt: skip
        assert pages[placed[-1]]["status"] == "CANCELLED"
        assert pages[placed[BUCKET + 1]]["trackingNumber"] == "T-MID"
        assert {d["customer"]["name"] for d in pages.values()} == {"Ada Lovelace"}
        # each entry equals the orders model's document, version included (a rename
        # is the last event of the orders placed before it)
        for order_id, entry in pages.items():
            order = await db["orders"].find_one({"_id": order_id})
            assert order is not None
            shown = {k: entry[k] for k in order if k not in ("_id", "customerId")}
            assert shown == {k: order[k] for k in shown}, order_id


def event(position: int, type_: str, aggregate: str, **data: Any) -> RecordedEvent:
    return RecordedEvent(position, str(uuid.uuid4()), type_, "X", aggregate, 1, data,
                         datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip


ADDRESS = {"line1": "a", "line2": None, "city": "b", "postalCode": "c", "country": "DE"}
LINE_MOVED = {"productId": "p", "quantity": 1, "lineTotalCents": 5}


def placed(position: int, order: str, customer: str, number: int | None) -> RecordedEvent:
    numbered = {} if number is None else {"customerOrderNumber": number}
    line = {"productId": "p", "sku": "P", "productName": "P", "quantity": 1,
            "unitPriceCents": 5, "lineTotalCents": 5}  # fmt: skip
    return event(
        position, ev.ORDER_PLACED, order, customerId=customer, customerName="Ada",
        customerEmail="ada@example.org", lines=[line], itemCount=1, totalCents=5,
        shippingAddress={"line1": "a", "city": "b", "postalCode": "c", "country": "DE"},
        **numbered,
    )  # fmt: skip


@pytest.mark.parametrize("merged", [False, True])
async def test_orders_from_before_events_carried_numbers_come_after_the_numbered(
    db: Db, merged: bool
) -> None:
    projection = OrderHistoryProjection()
    await prepare_collections(db, projection)
    ada = "ada"
    old = [f"old{i}" for i in range(3)]
    new = [f"new{i}" for i in range(40)]
    moved = {"customerId": ada, "totalCents": 5, "lines": [LINE_MOVED]}
    events = [
        event(1, ev.CUSTOMER_REGISTERED, ada, name="Ada", email="ada@example.org",
              address=ADDRESS),
        *(placed(2 + i, o, ada, None) for i, o in enumerate(old)),
        event(5, ev.ORDER_SHIPPED, old[0], trackingNumber="T1", **moved),
        # no ordersPlaced: an old event
        event(6, ev.CUSTOMER_RENAMED, ada, name="Ada L.", previousName="Ada"),
        *(placed(7 + i, o, ada, 4 + i) for i, o in enumerate(new)),  # counted from 4
        event(50, ev.ORDER_CANCELLED, old[1], reason="r", **moved),
        event(51, ev.ORDER_SHIPPED, new[0], trackingNumber="T2", customerOrderNumber=4,
              **moved),
        event(52, ev.CUSTOMER_RENAMED, ada, name="Ada Lovelace", previousName="Ada L.",
              ordersPlaced=43),
    ]  # fmt: skip
    writes = [w for e in events for w in projection.project(e)]
    await apply_writes(db, coalesce(writes) if merged else writes, 16)
    for size in (3, 20, 100):
        pages = await all_pages(db, ada, size)
        assert [d["_id"] for d in pages] == [*new[::-1], *old[::-1]], size
        by_id = {d["_id"]: d for d in pages}
        assert by_id[old[0]]["trackingNumber"] == "T1"
        assert by_id[old[1]]["status"] == "CANCELLED"
        assert by_id[new[0]]["trackingNumber"] == "T2"
        assert {d["customer"]["name"] for d in pages} == {"Ada Lovelace"}
    first = await history.order_history(db, ada, 5, None)
    assert first.total_count == 43


async def test_a_forged_cursor_is_refused_after_one_read(
    engine: AsyncEngine, db: Db, reads: list[Any]
) -> None:
    shop = Shop(engine, db)
    mug, ada = await shop.product("MUG", stock=1000), await shop.customer()
    for _ in range(3 * BUCKET):
        await shop.order(ada, (mug, 1))
    await shop.sync()
    for forged in (["history", 0, 10**12], ["history", 1, 0], ["history", 0, "legacy"]):
        cursor = paging.encode(*forged)
        reads.clear()
        if forged[2] == "legacy":  # no legacy bucket: nothing below
            assert (await history.order_history(db, ada, 20, cursor)).documents == []
            continue
        with pytest.raises(paging.InvalidCursor):
            await history.order_history(db, ada, 20, cursor)
        assert len(reads) <= 4, reads  # the head and one round of buckets
