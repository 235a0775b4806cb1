"""The dashboard read model: shop-wide counters, and per-product stock for the low-stock count.

Every event moves the dashboard document's ``version`` (it is built from all
events), so its version equals the projection's checkpoint. ``lowStockCount`` is
counted at read time from ``dashboard_stock``, one small document per product
kept by this projection, so it shares the dashboard's checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from domain import events as ev
from domain.events import RecordedEvent
from projections import readdb
from projections.projection import Write, guarded, insert_once

NAME = "dashboard"
"""The projection's name: its checkpoint, and what ``minVersion`` waits on."""
COLLECTION = "dashboard"
STOCK = "dashboard_stock"
DASHBOARD_ID = "dashboard"
LOW_STOCK_BELOW = 5

COUNTERS = (
    "productCount",
    "customerCount",
    "orderCount",
    "openOrderCount",
    "shippedOrderCount",
    "cancelledOrderCount",
    "revenueCents",
)


class DashboardProjection:
    name = NAME
    indexes: dict[str, Sequence[IndexModel]] = {
        STOCK: [IndexModel([("active", ASCENDING), ("available", ASCENDING)])]
    }
    seed_documents: dict[str, list[dict[str, Any]]] = {
        COLLECTION: [{"_id": DASHBOARD_ID, **dict.fromkeys(COUNTERS, 0), "version": 0}]
    }

    def project(self, e: RecordedEvent) -> list[Write]:
        counters = _counter_changes(e)
        update: dict[str, Any] = {"$inc": counters} if counters else {}
        return [guarded(COLLECTION, DASHBOARD_ID, e, update), *_stock_changes(e)]


def _counter_changes(e: RecordedEvent) -> dict[str, int]:
    match e.payload:
        case ev.ProductCreated():
            return {"productCount": 1}
        case ev.CustomerRegistered():
            return {"customerCount": 1}
        case ev.OrderPlaced(total_cents=total):
            return {"orderCount": 1, "openOrderCount": 1, "revenueCents": total}
        case ev.OrderCancelled(total_cents=total):
            return {"openOrderCount": -1, "cancelledOrderCount": 1, "revenueCents": -total}
        case ev.OrderShipped():
            return {"openOrderCount": -1, "shippedOrderCount": 1}
    return {}


def _stock_changes(e: RecordedEvent) -> list[Write]:
    match e.payload:
        case ev.ProductCreated(initial_stock=stock):
            document = {"available": stock, "active": True, "version": e.position}
            return [insert_once(STOCK, e.aggregate_id, document)]
        case ev.ProductRestocked(quantity=quantity):
            return [guarded(STOCK, e.aggregate_id, e, {"$inc": {"available": quantity}})]
        case ev.ProductDiscontinued():
            return [guarded(STOCK, e.aggregate_id, e, {"$set": {"active": False}})]
        case ev.OrderPlaced(lines=lines) | ev.OrderCancelled(lines=lines):
            sign = -1 if e.type == ev.ORDER_PLACED else 1
            return [
                guarded(STOCK, line.product_id, e, {"$inc": {"available": sign * line.quantity}})
                for line in lines
            ]
    return []


async def read_dashboard(db: AsyncDatabase[dict[str, Any]]) -> dict[str, Any]:
    """The dashboard document with its derived figures."""
    return await readdb.cached_query(db, COLLECTION, "derived", lambda: _read_dashboard(db))


async def _read_dashboard(db: AsyncDatabase[dict[str, Any]]) -> dict[str, Any]:
    document = await db[COLLECTION].find_one({"_id": DASHBOARD_ID}) or {
        **dict.fromkeys(COUNTERS, 0),
        "version": 0,
    }
    low_stock = await db[STOCK].count_documents(
        {"active": True, "available": {"$lt": LOW_STOCK_BELOW}}
    )
    kept = document["openOrderCount"] + document["shippedOrderCount"]
    return {
        **document,
        "lowStockCount": low_stock,
        "averageOrderValueCents": document["revenueCents"] // kept if kept else 0,
    }
