"""The product sales read model: units, revenue and orders per product, cancellations excluded."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from domain import events as ev
from domain.events import RecordedEvent
from projections import readdb
from projections.projection import Projector, Write, dispatch, guarded, insert_once

COLLECTION = "product_sales"


class ProductSalesProjection:
    name = "product_sales"
    indexes: dict[str, Sequence[IndexModel]] = {
        COLLECTION: [IndexModel([("unitsSold", DESCENDING), ("_id", ASCENDING)])]
    }

    def project(self, event: RecordedEvent) -> list[Write]:
        return dispatch(_HANDLERS, event)


def _created(e: RecordedEvent) -> list[Write]:
    # Created with the product, so sales updates never need an upsert.
    document = {
        "sku": e.data["sku"],
        "name": e.data["name"],
        "unitsSold": 0,
        "revenueCents": 0,
        "orderCount": 0,
        "version": e.position,
    }
    return [insert_once(COLLECTION, e.aggregate_id, document)]


def _renamed(e: RecordedEvent) -> list[Write]:
    if "name" not in e.data:
        return []
    return [guarded(COLLECTION, e.aggregate_id, e, {"$set": {"name": e.data["name"]}})]


def _sales(sign: int) -> Callable[[RecordedEvent], list[Write]]:
    def handle(e: RecordedEvent) -> list[Write]:
        return [
            guarded(
                COLLECTION,
                line["productId"],
                e,
                {
                    "$inc": {
                        "unitsSold": sign * line["quantity"],
                        "revenueCents": sign * line["lineTotalCents"],
                        "orderCount": sign,
                    }
                },
            )
            for line in e.data["lines"]
        ]

    return handle


_HANDLERS: dict[str, Projector] = {
    ev.PRODUCT_CREATED: _created,
    ev.PRODUCT_DETAILS_UPDATED: _renamed,
    ev.ORDER_PLACED: _sales(+1),
    ev.ORDER_CANCELLED: _sales(-1),
}


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
