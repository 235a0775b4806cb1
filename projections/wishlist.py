"""The wish lists read model: one document per customer, its products keyed by id.

A product sits under ``items.<productId>`` rather than in an array, so adding and
removing one are a ``$set`` and an ``$unset`` of its own path: version-guarded like
every write here, mergeable in a batch (``projection.coalesce``), and served by an
``_id`` lookup (the one lookup FerretDB 1.24 serves from an index). Product ids are
ids the write model checked, so they never hold a ``.`` or a ``$``.

The list is created by its first item: an empty shell (version 0) that the guarded
update fills, as the order history's buckets are. Each item keeps the product's SKU
and name as they were when it was added.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from domain.events import RecordedEvent
from domain.wishlists import WishlistItemAdded, WishlistItemRemoved
from projections import readdb
from projections.projection import Write, dispatch, guarded, insert_once, on, projectors

NAME = "wishlists"
"""The projection's name: its checkpoint, and what ``minVersion`` waits on."""
COLLECTION = "wishlists"
Document = dict[str, Any]


class WishlistsProjection:
    name = NAME
    indexes: dict[str, Sequence[IndexModel]] = {COLLECTION: []}

    def project(self, event: RecordedEvent) -> list[Write]:
        return dispatch(_HANDLERS, event)


def _added(e: RecordedEvent, event: WishlistItemAdded) -> list[Write]:
    item = {
        "productId": event.product_id,
        "sku": event.sku,
        "productName": event.product_name,
        "addedAt": e.occurred_at,
        "addedVersion": e.position,
    }
    shell = {"customerId": event.customer_id, "items": {}, "version": 0}
    return [
        insert_once(COLLECTION, event.customer_id, shell, shell=True),
        guarded(COLLECTION, event.customer_id, e, {"$set": {f"items.{event.product_id}": item}}),
    ]


def _removed(e: RecordedEvent, event: WishlistItemRemoved) -> list[Write]:
    update = {"$unset": {f"items.{event.product_id}": ""}}
    return [guarded(COLLECTION, event.customer_id, e, update)]


_HANDLERS = projectors(
    on(WishlistItemAdded, _added),
    on(WishlistItemRemoved, _removed),
)


async def find_wishlist(db: AsyncDatabase[Document], customer_id: str) -> Document:
    """The customer's list, newest item first; an empty one (version 0) before its first."""
    document = await readdb.find_by_id(db, COLLECTION, customer_id)
    if document is None:
        return {"customerId": customer_id, "items": [], "version": 0}
    items = sorted(document["items"].values(), key=lambda i: i["addedVersion"], reverse=True)
    return {**document, "items": items}
