"""The product sales read model: units, revenue and orders per product, cancellations excluded."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from domain import events as ev
from domain.events import RecordedEvent
from projections import readdb
from projections.projection import Write, dispatch, guarded, insert_once, on, projectors

NAME = "product_sales"
"""The projection's name: its checkpoint, and what ``minVersion`` waits on."""
COLLECTION = "product_sales"


class ProductSalesProjection:
    name = NAME
    indexes: dict[str, Sequence[IndexModel]] = {
        COLLECTION: [IndexModel([("unitsSold", DESCENDING), ("_id", ASCENDING)])]
    }

    def project(self, event: RecordedEvent) -> list[Write]:
        return dispatch(_HANDLERS, event)


def _created(e: RecordedEvent, event: ev.ProductCreated) -> list[Write]:
    # Created with the product, so sales updates never need an upsert.
    document = {
        "sku": event.sku,
        "name": event.name,
        "unitsSold": 0,
        "revenueCents": 0,
        "orderCount": 0,
        "version": e.position,
    }
    return [insert_once(COLLECTION, e.aggregate_id, document)]


def _renamed(e: RecordedEvent, event: ev.ProductDetailsUpdated) -> list[Write]:
    if event.name is None:
        return []
    return [guarded(COLLECTION, e.aggregate_id, e, {"$set": {"name": event.name}})]


def _sales(sign: int) -> Callable[[RecordedEvent, ev.OrderPlaced | ev.OrderCancelled], list[Write]]:
    def handle(e: RecordedEvent, event: ev.OrderPlaced | ev.OrderCancelled) -> list[Write]:
        return [
            guarded(
                COLLECTION,
                line.product_id,
                e,
                {
                    "$inc": {
                        "unitsSold": sign * line.quantity,
                        "revenueCents": sign * line.line_total_cents,
                        "orderCount": sign,
                    }
                },
            )
            for line in event.lines
        ]

    return handle


_HANDLERS = projectors(
    on(ev.ProductCreated, _created),
    on(ev.ProductDetailsUpdated, _renamed),
    on(ev.OrderPlaced, _sales(+1)),
    on(ev.OrderCancelled, _sales(-1)),
)


async def top_products(db: AsyncDatabase[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Products that sold at least one unit, best first; ties by revenue, then id."""

    async def load() -> list[dict[str, Any]]:
        return (
            await db[COLLECTION]
            .find({"unitsSold": {"$gt": 0}})
            .sort([("unitsSold", DESCENDING), ("revenueCents", DESCENDING), ("_id", ASCENDING)])
            .limit(limit)
            .to_list()
        )

    return await readdb.cached_query(db, COLLECTION, ("top", limit), load)
