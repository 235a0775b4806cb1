"""The orders read model: each order with its customer's current name, for history and shipping.

The shipping queue is this collection's PLACED orders, oldest first (index
``status, placedVersion``); it shares the orders projection's checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel, UpdateMany
from pymongo.asynchronous.database import AsyncDatabase

from domain import events as ev
from domain.events import RecordedEvent
from projections import paging, readdb
from projections.paging import Page
from projections.projection import Write, dispatch, guarded, insert_once, on, projectors

NAME = "orders"
"""The projection's name: its checkpoint, and what ``minVersion`` waits on."""
COLLECTION = "orders"
Db = AsyncDatabase[dict[str, Any]]


class OrdersProjection:
    name = NAME
    indexes: dict[str, Sequence[IndexModel]] = {
        COLLECTION: [
            IndexModel([("customerId", ASCENDING), ("placedVersion", DESCENDING)]),
            IndexModel([("status", ASCENDING), ("placedVersion", ASCENDING)]),
        ]
    }

    def project(self, event: RecordedEvent) -> list[Write]:
        return dispatch(_HANDLERS, event)


def order_document(e: RecordedEvent, event: ev.OrderPlaced) -> dict[str, Any]:
    """A newly placed order as the orders read model keeps it (history shares it)."""
    customer = {
        "id": event.customer_id,
        "name": event.customer_name,
        "email": event.customer_email,
    }
    return {
        "customerId": event.customer_id,
        "customer": customer,
        "status": "PLACED",
        "lines": ev.to_data(event.lines),
        "itemCount": event.item_count,
        "totalCents": event.total_cents,
        "shippingAddress": ev.to_data(event.shipping_address),
        "placedAt": e.occurred_at,
        "placedVersion": e.position,
        "shippedAt": None,
        "trackingNumber": None,
        "cancelledAt": None,
        "cancelReason": None,
        "version": e.position,
    }


def _placed(e: RecordedEvent, event: ev.OrderPlaced) -> list[Write]:
    return [insert_once(COLLECTION, e.aggregate_id, order_document(e, event))]


def _cancelled(e: RecordedEvent, event: ev.OrderCancelled) -> list[Write]:
    fields = {"status": "CANCELLED", "cancelledAt": e.occurred_at, "cancelReason": event.reason}
    return [guarded(COLLECTION, e.aggregate_id, e, {"$set": fields})]


def _shipped(e: RecordedEvent, event: ev.OrderShipped) -> list[Write]:
    fields = {
        "status": "SHIPPED",
        "shippedAt": e.occurred_at,
        "trackingNumber": event.tracking_number,
    }
    return [guarded(COLLECTION, e.aggregate_id, e, {"$set": fields})]


def _customer_renamed(e: RecordedEvent, event: ev.CustomerRenamed) -> list[Write]:
    """Every order of the customer placed before the rename takes the new name."""
    operation = UpdateMany(
        {"customerId": e.aggregate_id, "version": {"$lt": e.position}},
        {"$set": {"customer.name": event.name, "version": e.position}},
    )
    return [Write(COLLECTION, operation, key=None)]


_HANDLERS = projectors(
    on(ev.OrderPlaced, _placed),
    on(ev.OrderCancelled, _cancelled),
    on(ev.OrderShipped, _shipped),
    on(ev.CustomerRenamed, _customer_renamed),
)


async def find_order(db: Db, order_id: str) -> dict[str, Any] | None:
    return await readdb.find_by_id(db, COLLECTION, order_id)


async def _page(
    db: Db,
    query: dict[str, Any],
    direction: int,
    kind: str,
    first: int,
    after: str | None,
    count: bool,
) -> Page:
    page_query = query
    if after is not None:
        (last,) = paging.decode(kind, after, int)
        beyond = "$lt" if direction == DESCENDING else "$gt"
        page_query = {**query, "placedVersion": {beyond: last}}
    documents = (
        await db[COLLECTION]
        .find(page_query)
        .sort([("placedVersion", direction)])
        .limit(first + 1)
        .to_list()
    )
    total = await db[COLLECTION].count_documents(query) if count else None
    return paging.page_of(
        documents, first, lambda d: paging.encode(kind, d["placedVersion"]), total
    )


async def shipping_queue(db: Db, first: int, after: str | None, count: bool = True) -> Page:
    """PLACED orders, oldest first; ``count``: also count them all."""
    return await readdb.cached_query(
        db, COLLECTION, ("shipping", first, after, count),
        lambda: _page(db, {"status": "PLACED"}, ASCENDING, "shipping", first, after, count),
    )  # fmt: skip
