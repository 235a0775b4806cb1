"""The products read model: one document per product, with stock figures and sales."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from domain import events as ev
from domain.events import RecordedEvent
from domain.products import normalise_sku
from projections import paging, readdb
from projections.paging import InvalidCursor, Page
from projections.projection import Write, dispatch, guarded, insert_once, on, projectors

NAME = "products"
"""The projection's name: its checkpoint, and what ``minVersion`` waits on."""
COLLECTION = "products"
Document = dict[str, Any]


class ProductsProjection:
    name = NAME
    indexes: dict[str, Sequence[IndexModel]] = {
        COLLECTION: [
            IndexModel([("sku", ASCENDING)]),
            IndexModel([("nameKey", ASCENDING), ("_id", ASCENDING)]),
            IndexModel([("priceCents", ASCENDING), ("_id", ASCENDING)]),
            IndexModel([("createdVersion", DESCENDING)]),
            IndexModel([("unitsSold", DESCENDING), ("_id", ASCENDING)]),
            IndexModel([("category", ASCENDING)]),
        ]
    }

    def project(self, event: RecordedEvent) -> list[Write]:
        return dispatch(_HANDLERS, event)


def _created(e: RecordedEvent, event: ev.ProductCreated) -> list[Write]:
    document = {
        "sku": event.sku,
        "name": event.name,
        "nameKey": event.name.casefold(),
        "description": event.description,
        "category": event.category,
        "priceCents": event.price_cents,
        "status": "ACTIVE",
        "stockOnHand": event.initial_stock,
        "stockReserved": 0,
        "stockAvailable": event.initial_stock,
        "unitsSold": 0,
        "createdAt": e.occurred_at,
        "updatedAt": e.occurred_at,
        "createdVersion": e.position,
        "version": e.position,
    }
    return [insert_once(COLLECTION, e.aggregate_id, document)]


def _set(e: RecordedEvent, fields: dict[str, Any]) -> list[Write]:
    return [
        guarded(COLLECTION, e.aggregate_id, e, {"$set": {**fields, "updatedAt": e.occurred_at}})
    ]


def _details_updated(e: RecordedEvent, event: ev.ProductDetailsUpdated) -> list[Write]:
    fields: dict[str, Any] = {
        name: value
        for name, value in (
            ("name", event.name),
            ("description", event.description),
            ("category", event.category),
        )
        if value is not None
    }
    if event.name is not None:
        fields["nameKey"] = event.name.casefold()
    return _set(e, fields)


def _price_changed(e: RecordedEvent, event: ev.ProductPriceChanged) -> list[Write]:
    return _set(e, {"priceCents": event.price_cents})


def _restocked(e: RecordedEvent, event: ev.ProductRestocked) -> list[Write]:
    update = {
        "$inc": {"stockOnHand": event.quantity, "stockAvailable": event.quantity},
        "$set": {"updatedAt": e.occurred_at},
    }
    return [guarded(COLLECTION, e.aggregate_id, e, update)]


def _discontinued(e: RecordedEvent, event: ev.ProductDiscontinued) -> list[Write]:
    return _set(e, {"status": "DISCONTINUED"})


def _stock_moves(
    e: RecordedEvent, lines: Sequence[ev.OrderedLine | ev.LineMovement], **per_unit: int
) -> list[Write]:
    """One guarded ``$inc`` per order line: each unit moves ``per_unit`` of each figure."""
    return [
        guarded(
            COLLECTION,
            line.product_id,
            e,
            {
                "$inc": {field: sign * line.quantity for field, sign in per_unit.items()},
                "$set": {"updatedAt": e.occurred_at},
            },
        )
        for line in lines
    ]


def _order_placed(e: RecordedEvent, event: ev.OrderPlaced) -> list[Write]:
    return _stock_moves(e, event.lines, stockReserved=1, stockAvailable=-1, unitsSold=1)


def _order_cancelled(e: RecordedEvent, event: ev.OrderCancelled) -> list[Write]:
    return _stock_moves(e, event.lines, stockReserved=-1, stockAvailable=1, unitsSold=-1)


def _order_shipped(e: RecordedEvent, event: ev.OrderShipped) -> list[Write]:
    return _stock_moves(e, event.lines, stockOnHand=-1, stockReserved=-1)


_HANDLERS = projectors(
    on(ev.ProductCreated, _created),
    on(ev.ProductDetailsUpdated, _details_updated),
    on(ev.ProductPriceChanged, _price_changed),
    on(ev.ProductRestocked, _restocked),
    on(ev.ProductDiscontinued, _discontinued),
    on(ev.OrderPlaced, _order_placed),
    on(ev.OrderCancelled, _order_cancelled),
    on(ev.OrderShipped, _order_shipped),
)


# --- reads -------------------------------------------------------------------------------


class ProductSort(StrEnum):
    NAME_ASC = "NAME_ASC"
    PRICE_ASC = "PRICE_ASC"
    PRICE_DESC = "PRICE_DESC"
    NEWEST = "NEWEST"
    BEST_SELLING = "BEST_SELLING"


# Each order ends on a unique key, so a cursor names one place in it.
_ORDER: dict[ProductSort, tuple[tuple[str, int], ...]] = {
    ProductSort.NAME_ASC: (("nameKey", ASCENDING), ("_id", ASCENDING)),
    ProductSort.PRICE_ASC: (("priceCents", ASCENDING), ("_id", ASCENDING)),
    ProductSort.PRICE_DESC: (("priceCents", DESCENDING), ("_id", ASCENDING)),
    ProductSort.NEWEST: (("createdVersion", DESCENDING), ("_id", ASCENDING)),
    ProductSort.BEST_SELLING: (("unitsSold", DESCENDING), ("_id", ASCENDING)),
}


__all__ = ["InvalidCursor", "Page", "ProductFilter", "ProductSort", "ProductsProjection"]


@dataclass(frozen=True, slots=True)
class ProductFilter:
    search: str | None = None
    category: str | None = None
    status: str | None = None
    min_price_cents: int | None = None
    max_price_cents: int | None = None
    in_stock: bool | None = None


def _escape_regex(text: str) -> str:
    return "".join("\\" + c if c in r".^$*+?()[]{}|\/-" else c for c in text)


def filter_query(f: ProductFilter) -> dict[str, Any]:
    query: dict[str, Any] = {}
    if f.search:
        pattern = {"$regex": _escape_regex(f.search), "$options": "i"}
        query["$or"] = [{"name": pattern}, {"sku": pattern}, {"description": pattern}]
    if f.category is not None:
        query["category"] = f.category
    if f.status is not None:
        query["status"] = f.status
    price: dict[str, int] = {}
    if f.min_price_cents is not None:
        price["$gte"] = f.min_price_cents
    if f.max_price_cents is not None:
        price["$lte"] = f.max_price_cents
    if price:
        query["priceCents"] = price
    if f.in_stock is not None:
        query["stockAvailable"] = {"$gt": 0} if f.in_stock else {"$lte": 0}
    return query


def encode_cursor(sort: ProductSort, document: Document) -> str:
    (field, _), _ = _ORDER[sort]
    return paging.encode(sort.value, document[field], document["_id"])


def _after(sort: ProductSort, cursor: str) -> dict[str, Any]:
    (field, direction), _ = _ORDER[sort]
    value, last_id = paging.decode(sort.value, cursor, str if field == "nameKey" else int, str)
    beyond = "$gt" if direction == ASCENDING else "$lt"
    return {"$or": [{field: {beyond: value}}, {field: value, "_id": {"$gt": last_id}}]}


async def find_product(db: AsyncDatabase[Document], product_id: str) -> Document | None:
    return await readdb.find_by_id(db, COLLECTION, product_id)


async def find_product_by_sku(db: AsyncDatabase[Document], sku: str) -> Document | None:
    sku = normalise_sku(sku)
    return await readdb.cached_query(
        db, COLLECTION, ("sku", sku), lambda: db[COLLECTION].find_one({"sku": sku})
    )


async def list_products(
    db: AsyncDatabase[Document],
    product_filter: ProductFilter,
    sort: ProductSort,
    first: int,
    after: str | None,
    count: bool = True,
) -> Page:
    """One page of products in ``sort`` order, after the cursor ``after``.

    ``count``: also count all matches (a second query; skip it when nobody asks).
    """
    key = ("page", product_filter, sort, first, after, count)
    return await readdb.cached_query(
        db, COLLECTION, key, lambda: _list_products(db, product_filter, sort, first, after, count)
    )


async def _list_products(
    db: AsyncDatabase[Document],
    product_filter: ProductFilter,
    sort: ProductSort,
    first: int,
    after: str | None,
    count: bool,
) -> Page:
    collection = db[COLLECTION]
    query = filter_query(product_filter)
    page_query = {"$and": [query, _after(sort, after)]} if after else query
    order: Sequence[tuple[str, int]] = _ORDER[sort]
    documents = await collection.find(page_query).sort(list(order)).limit(first + 1).to_list()
    total = await collection.count_documents(query) if count else None
    return paging.page_of(documents, first, lambda d: encode_cursor(sort, d), total)
