"""The products read model: one document per product, with stock figures and sales."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from domain import events as ev
from domain.events import RecordedEvent
from domain.products import normalise_sku
from projections.projection import Write, newer_than

COLLECTION = "products"
Document = dict[str, Any]


class ProductsProjection:
    name = "products"
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
        handler = _HANDLERS.get(event.type)
        if handler is None:
            return []
        return [Write(COLLECTION, op, event.aggregate_id) for op in handler(event)]


def _created(e: RecordedEvent) -> list[UpdateOne]:
    d = e.data
    document = {
        "sku": d["sku"],
        "name": d["name"],
        "nameKey": d["name"].casefold(),
        "description": d["description"],
        "category": d["category"],
        "priceCents": d["priceCents"],
        "status": "ACTIVE",
        "stockOnHand": d["initialStock"],
        "stockReserved": 0,
        "stockAvailable": d["initialStock"],
        "unitsSold": 0,
        "createdAt": e.occurred_at,
        "updatedAt": e.occurred_at,
        "createdVersion": e.position,
        "version": e.position,
    }
    # Insert-only: a replayed creation finds the document and changes nothing.
    return [UpdateOne({"_id": e.aggregate_id}, {"$setOnInsert": document}, upsert=True)]


def _set(e: RecordedEvent, fields: dict[str, Any]) -> list[UpdateOne]:
    update = {**fields, "updatedAt": e.occurred_at, "version": e.position}
    return [UpdateOne(newer_than(e.aggregate_id, e), {"$set": update})]


def _details_updated(e: RecordedEvent) -> list[UpdateOne]:
    fields: dict[str, Any] = {
        k: e.data[k] for k in ("name", "description", "category") if k in e.data
    }
    if "name" in fields:
        fields["nameKey"] = fields["name"].casefold()
    return _set(e, fields)


def _price_changed(e: RecordedEvent) -> list[UpdateOne]:
    return _set(e, {"priceCents": e.data["priceCents"]})


def _restocked(e: RecordedEvent) -> list[UpdateOne]:
    quantity = e.data["quantity"]
    return [
        UpdateOne(
            newer_than(e.aggregate_id, e),
            {
                "$inc": {"stockOnHand": quantity, "stockAvailable": quantity},
                "$set": {"updatedAt": e.occurred_at, "version": e.position},
            },
        )
    ]


def _discontinued(e: RecordedEvent) -> list[UpdateOne]:
    return _set(e, {"status": "DISCONTINUED"})


_HANDLERS = {
    ev.PRODUCT_CREATED: _created,
    ev.PRODUCT_DETAILS_UPDATED: _details_updated,
    ev.PRODUCT_PRICE_CHANGED: _price_changed,
    ev.PRODUCT_RESTOCKED: _restocked,
    ev.PRODUCT_DISCONTINUED: _discontinued,
}


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


@dataclass(frozen=True, slots=True)
class ProductFilter:
    search: str | None = None
    category: str | None = None
    status: str | None = None
    min_price_cents: int | None = None
    max_price_cents: int | None = None
    in_stock: bool | None = None


@dataclass(frozen=True, slots=True)
class Page:
    documents: list[Document]
    cursors: list[str]
    has_next_page: bool
    total_count: int


class InvalidCursor(ValueError):
    """An ``after`` cursor this server did not hand out for that order."""


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
    raw = json.dumps([sort.value, document[field], document["_id"]], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _after(sort: ProductSort, cursor: str) -> dict[str, Any]:
    try:
        name, value, last_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, TypeError) as error:
        raise InvalidCursor(f"malformed cursor {cursor!r}") from error
    if name != sort.value:
        raise InvalidCursor("the cursor belongs to another sort order")
    (field, direction), _ = _ORDER[sort]
    beyond = "$gt" if direction == ASCENDING else "$lt"
    return {"$or": [{field: {beyond: value}}, {field: value, "_id": {"$gt": last_id}}]}


async def find_product(db: AsyncDatabase[Document], product_id: str) -> Document | None:
    return await db[COLLECTION].find_one({"_id": product_id})


async def find_product_by_sku(db: AsyncDatabase[Document], sku: str) -> Document | None:
    return await db[COLLECTION].find_one({"sku": normalise_sku(sku)})


async def list_products(
    db: AsyncDatabase[Document],
    product_filter: ProductFilter,
    sort: ProductSort,
    first: int,
    after: str | None,
) -> Page:
    """One page of products in ``sort`` order, after the cursor ``after``."""
    collection = db[COLLECTION]
    query = filter_query(product_filter)
    page_query = {"$and": [query, _after(sort, after)]} if after else query
    order: Sequence[tuple[str, int]] = _ORDER[sort]
    documents = await collection.find(page_query).sort(list(order)).limit(first + 1).to_list()
    total = await collection.count_documents(query)
    page = documents[:first]
    return Page(
        documents=page,
        cursors=[encode_cursor(sort, d) for d in page],
        has_next_page=len(documents) > first,
        total_count=total,
    )
