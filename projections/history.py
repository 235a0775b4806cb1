"""Each customer's orders as one document of order ids: orderHistory by ``_id`` lookups only.

``orderHistory`` used to be a query on the orders collection by ``customerId``,
sorted by ``placedVersion``. MongoDB serves that from an index; FerretDB 1.24's
SQLite backend serves no query but ``_id`` lookups from an index, and decoded all
100,000 orders for each page (40 s). Here a page is one lookup of the customer's
list, then one lookup per order shown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from pymongo import IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from domain import events as ev
from domain.events import RecordedEvent
from projections import orders, paging
from projections.paging import Page
from projections.projection import Write, guarded, insert_once

COLLECTION = "customer_orders"
Db = AsyncDatabase[dict[str, Any]]


class OrderHistoryProjection:
    """``{_id: customerId, orders: [{placedVersion, id}, ...] (oldest first), version}``."""

    name = "order_history"
    indexes: dict[str, Sequence[IndexModel]] = {COLLECTION: []}

    def project(self, e: RecordedEvent) -> list[Write]:
        if e.type == ev.CUSTOMER_REGISTERED:
            document = {"orders": [], "version": e.position}
            return [insert_once(COLLECTION, e.aggregate_id, document)]
        if e.type == ev.ORDER_PLACED:
            entry = {"placedVersion": e.position, "id": e.aggregate_id}
            update = {"$push": {"orders": {"$each": [entry]}}}
            return [guarded(COLLECTION, e.data["customerId"], e, update)]
        return []


async def order_history(
    db: Db, customer_id: str, first: int, after: str | None, up_to: int, count: bool = True
) -> Page:
    """A customer's orders placed at or before ``up_to``, newest first.

    ``up_to`` is how far the orders projection has got: every order listed has its
    document. ``count``: also count them all (free here).
    """
    listed = await db[COLLECTION].find_one({"_id": customer_id}, {"orders": 1})
    entries = [e for e in (listed or {}).get("orders", []) if e["placedVersion"] <= up_to]
    total = len(entries)
    if after is not None:
        (last,) = paging.decode("history", after, 1)
        entries = [e for e in entries if e["placedVersion"] < last]
    newest = entries[-(first + 1) :][::-1]
    found = await asyncio.gather(*(orders.find_order(db, e["id"]) for e in newest))
    documents = [d for d in found if d is not None]
    return paging.page_of(
        documents, first, lambda d: paging.encode("history", d["placedVersion"]),
        total if count else None,
    )  # fmt: skip
