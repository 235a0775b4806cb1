"""Each customer's order history in bucket documents: a page is one round of reads.

``orderHistory`` needs a customer's orders, newest first, each complete (lines,
status, the customer's current name). FerretDB 1.24 serves only ``_id`` lookups
from an index, so the page must come from documents whose ``_id`` the reader can
name. A page that lists the customer's order ids and then looks each order up would
take 21 round trips.

**Buckets** (MongoDB's bucket pattern). Every OrderPlaced event carries the
customer's order number n (``customerOrderNumber``: 1 for the first, counted by the
write model), and every later event of the order repeats it. Order n lives in bucket
``k = (n - 1) // BUCKET`` of its customer, the document ``"<customerId>:<k>"``, as a
complete summary under ``orders.<orderId>``. Buckets hold at most BUCKET orders:
placing an order locks the customer's row, so numbers are unique and follow the
outbox's order.

**The head** ``"<customerId>"`` (created at registration) holds the customer, the
order count and the highest and lowest bucket numbers (``top``, ``bottom``). A page
reads the head, then the buckets it needs side by side (three for a page of 20): two
round trips, and none when the read cache holds them. The head holds no copies of
orders on purpose: FerretDB rewrites a whole document on every update (on
PostgreSQL about 0.3 ms per order it holds), and the head changes with every order
of the customer; a head carrying the two newest buckets made each order cost
22 ms of updates instead of 6.

**Renames** fan out by ``_id`` too: CustomerRenamed carries ``ordersPlaced``, so the
projection renames the head and buckets 0 to the last, never scanning. The name is
kept once per document (every order in it has the same customer) with the rename's
position (``nameVersion``), and an order's version shown is the later of its own and
that rename's, as the orders model shows it.

**Orders placed before events carried numbers** (an outbox from an older version)
go to one bucket ``"<customerId>:legacy"``, read after the numbered ones (they are
older than all of them); it is unbounded.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

from pymongo import IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from domain import events as ev
from domain.events import RecordedEvent
from projections import orders, paging, readdb
from projections.paging import Page
from projections.projection import Write, dispatch, guarded, insert_once, on, projectors

NAME = "order_history_pages"
"""The projection's name: its checkpoint, and what ``minVersion`` waits on."""
COLLECTION = "order_history_pages"
BUCKET = 16
"""Orders per bucket: small, since each order's update rewrites its bucket."""
LEGACY = "legacy"
NO_BUCKET = 2**31
"""The initial ``bottom`` (no numbered bucket yet): ``$min`` replaces it with the first."""
Db = AsyncDatabase[dict[str, Any]]
Document = dict[str, Any]
# The order fields a history entry shows (its customer comes from its document).
_NOT_IN_SUMMARY = ("customerId", "customer")


class OrderHistoryProjection:
    name = NAME
    indexes: dict[str, Sequence[IndexModel]] = {COLLECTION: []}

    def project(self, e: RecordedEvent) -> list[Write]:
        return dispatch(_HANDLERS, e)


def bucket_id(customer_id: str, bucket: int | str) -> str:
    return f"{customer_id}:{bucket}"


def bucket_of(number: int) -> int:
    return (number - 1) // BUCKET


def _registered(e: RecordedEvent, event: ev.CustomerRegistered) -> list[Write]:
    head = {
        "customer": {"id": e.aggregate_id, "name": event.name, "email": event.email},
        "nameVersion": 0,
        "count": 0,
        "top": -1,
        "bottom": NO_BUCKET,
        "legacy": False,
        "version": e.position,
    }
    return [insert_once(COLLECTION, e.aggregate_id, head)]


def _bucket(number: int | None) -> int | str:
    return LEGACY if number is None else bucket_of(number)


def _placed(e: RecordedEvent, event: ev.OrderPlaced) -> list[Write]:
    order_id, customer_id = e.aggregate_id, event.customer_id
    document = {"_id": order_id, **orders.order_document(e, event)}
    summary = {k: v for k, v in document.items() if k not in _NOT_IN_SUMMARY}
    summary["customerOrderNumber"] = event.customer_order_number
    bucket = _bucket(event.customer_order_number)
    shell = {
        "customer": document["customer"],
        "nameVersion": 0,
        "orders": {},
        "version": 0,
    }
    writes = [
        insert_once(COLLECTION, bucket_id(customer_id, bucket), shell, shell=True),
        guarded(
            COLLECTION, bucket_id(customer_id, bucket), e,
            {"$set": {f"orders.{order_id}": summary}},
        ),
    ]  # fmt: skip
    head: dict[str, Any] = {"$inc": {"count": 1}}
    if isinstance(bucket, int):
        head["$max"] = {"top": bucket}
        head["$min"] = {"bottom": bucket}
    else:
        head["$set"] = {"legacy": True}
    writes.append(guarded(COLLECTION, customer_id, e, head))
    return writes


def _changed(
    e: RecordedEvent, event: ev.OrderCancelled | ev.OrderShipped, changes: dict[str, Any]
) -> list[Write]:
    fields = {**changes, "version": e.position}
    bucket = _bucket(event.customer_order_number)
    at = f"orders.{e.aggregate_id}"
    update = {"$set": {f"{at}.{name}": value for name, value in fields.items()}}
    return [guarded(COLLECTION, bucket_id(event.customer_id, bucket), e, update)]


def _cancelled(e: RecordedEvent, event: ev.OrderCancelled) -> list[Write]:
    changes = {"status": "CANCELLED", "cancelledAt": e.occurred_at, "cancelReason": event.reason}
    return _changed(e, event, changes)


def _shipped(e: RecordedEvent, event: ev.OrderShipped) -> list[Write]:
    changes = {
        "status": "SHIPPED",
        "shippedAt": e.occurred_at,
        "trackingNumber": event.tracking_number,
    }
    return _changed(e, event, changes)


def _renamed(e: RecordedEvent, event: ev.CustomerRenamed) -> list[Write]:
    customer_id, placed = e.aggregate_id, event.orders_placed
    rename = {"$set": {"customer.name": event.name, "nameVersion": e.position}}
    keys: list[str] = [customer_id, bucket_id(customer_id, LEGACY)]
    if placed:
        keys += [bucket_id(customer_id, k) for k in range(bucket_of(placed) + 1)]
    # A document that does not exist is left alone: a guarded update matches nothing.
    return [guarded(COLLECTION, key, e, rename) for key in keys]


_HANDLERS = projectors(
    on(ev.CustomerRegistered, _registered),
    on(ev.OrderPlaced, _placed),
    on(ev.OrderCancelled, _cancelled),
    on(ev.OrderShipped, _shipped),
    on(ev.CustomerRenamed, _renamed),
)


# Reading


def _entries(document: Document, summaries: dict[str, Any]) -> list[Document]:
    """The orders of a bucket, as order documents with their customer."""
    customer, renamed = document["customer"], document.get("nameVersion", 0)
    return [
        {**s, "customer": customer, "version": max(s["version"], renamed)}
        for s in summaries.values()
    ]


async def order_history(
    db: Db, customer_id: str, first: int, after: str | None, count: bool = True
) -> Page:
    """A customer's orders, newest first: ``first`` after the cursor ``after``.

    The head first, then the buckets below, newest first, read side by side as many
    as the rest of the page needs. A cursor names the last order shown and its bucket;
    the walk never goes above the head's top bucket nor below its bottom one, whatever
    a cursor says.
    ``count``: also the total (kept in the head).
    """
    head = await readdb.find_by_id(db, COLLECTION, customer_id)
    if head is None:
        return Page([], [], False, 0 if count else None)
    top, bottom, legacy = head["top"], head["bottom"], head["legacy"]
    below: int | None = None
    start: int | str = top
    if after is not None:
        below, start = paging.decode("history", after, int, (int, str))
        if isinstance(start, str) and start != LEGACY:
            raise paging.InvalidCursor("malformed cursor")
    walk: Iterator[int | str] = (
        iter([LEGACY] if legacy else [])
        if start == LEGACY
        else itertools.chain(
            range(min(int(start), top), bottom - 1, -1), [LEGACY] if legacy else []
        )
    )
    entries: list[Document] = []
    while _shown(entries, below) <= first:
        # enough buckets for the rest of the page (the first may be nearly empty)
        taken = list(itertools.islice(walk, -(-(first + 1) // BUCKET) + 1))
        if not taken:
            break
        found = await asyncio.gather(
            *(readdb.find_by_id(db, COLLECTION, bucket_id(customer_id, k)) for k in taken)
        )
        for document in found:
            if document is not None:
                entries += _entries(document, document["orders"])
        if below is not None and not any(e["placedVersion"] == below for e in entries):
            # the order the cursor names is in the first bucket read: a cursor this
            # server did not hand out (or for another customer) walks no further
            raise paging.InvalidCursor("the cursor names no order of this customer")
    if below is not None:
        entries = [e for e in entries if e["placedVersion"] < below]
    entries.sort(key=lambda e: e["placedVersion"], reverse=True)

    def cursor(document: Document) -> str:
        return paging.encode("history", document["placedVersion"], _bucket_of_entry(document))

    return paging.page_of(entries[: first + 1], first, cursor, head["count"] if count else None)


def _shown(entries: list[Document], below: int | None) -> int:
    return sum(1 for e in entries if below is None or e["placedVersion"] < below)


def _bucket_of_entry(document: Document) -> int | str:
    number = document.get("customerOrderNumber")
    return LEGACY if number is None else bucket_of(number)
