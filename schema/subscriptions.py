"""Subscriptions: the current document, then a message whenever its projection changes it.

Changes that land in one relay batch are coalesced: each message is the document
as of its ``version``, and versions only grow. All subscribers of one document share
one read per change.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

import strawberry
from graphql import GraphQLError
from prometheus_client import Gauge

from projections import audit, dashboard, orders
from projections import products as product_views
from projections.feeds import DocumentMissing, StoreUnavailable
from projections.progress import NotYetConsistent
from schema import keys
from schema.consistency import wait_for
from schema.context import Info, bad_input
from schema.queries import visible_order
from schema.scalars import Version
from schema.sharing import shared_payload
from schema.types import Dashboard, DomainEvent, Order, Product, given

OPEN_SUBSCRIPTIONS = Gauge(
    "shop_open_subscriptions", "Subscriptions open in this process, by field", ["field"],
    registry=None,
)  # fmt: skip
# How many events one catch-up read takes; how long one live wait lasts before looking again.
EVENT_BATCH = 500
FROM_THE_START = Version(0)
LIVE_WAIT = 30.0

Document = dict[str, Any]


async def follow(
    info: Info, projection: str, key: str, load: Callable[[], Awaitable[Document | None]]
) -> AsyncGenerator[Document, None]:
    """The document now, then again whenever its version grows.

    Read once per change for all subscribers of the document (see ``projections.feeds``).
    """
    try:
        with OPEN_SUBSCRIPTIONS.labels(info.field_name).track_inprogress():
            async for document in info.context.feeds.documents(projection, key, load):
                yield document
    except DocumentMissing as missing:
        raise GraphQLError(str(missing), extensions={"code": "NOT_FOUND"}) from None
    except StoreUnavailable:
        raise GraphQLError(
            "the read store is unavailable; subscribe again later",
            extensions={"code": "UNAVAILABLE"},
        ) from None


def followed_id(projection: str, id: str) -> str:
    """The id to follow; NOT_FOUND at once for one no document can have (no read, no
    feed), BAD_USER_INPUT for one that is no id at all."""
    key = keys.document_id(id)
    if key is None:
        raise GraphQLError(f"no {projection} document {id}", extensions={"code": "NOT_FOUND"})
    return key


@strawberry.type
class Subscription:
    @strawberry.subscription(description="The product now, then after every change.")  # type: ignore[untyped-decorator]
    async def product_updated(
        self, info: Info, id: strawberry.ID, min_version: Version | None = strawberry.UNSET
    ) -> AsyncGenerator[Product, None]:
        key = followed_id(product_views.NAME, id)
        await wait_for(info, product_views.NAME, given(min_version))
        db = info.context.db
        async for document in follow(
            info, product_views.NAME, key, lambda: product_views.find_product(db, key)
        ):
            yield shared_payload(document, Product.from_document)

    @strawberry.subscription(  # type: ignore[untyped-decorator]
        description="The order now (once its projection has reached minVersion), "
        "then after every change."
    )
    async def order_updated(
        self, info: Info, id: strawberry.ID, min_version: Version | None = strawberry.UNSET
    ) -> AsyncGenerator[Order, None]:
        key = followed_id(orders.NAME, id)
        await wait_for(info, orders.NAME, given(min_version))
        db = info.context.db
        async for document in follow(info, orders.NAME, key, lambda: orders.find_order(db, key)):
            if not visible_order(info, document):  # answered like a missing order
                raise GraphQLError(
                    f"no {orders.NAME} document {id}", extensions={"code": "NOT_FOUND"}
                )
            yield shared_payload(document, Order.from_document)

    @strawberry.subscription(description="The dashboard now, then after every change.")  # type: ignore[untyped-decorator]
    async def dashboard_updated(
        self, info: Info, min_version: Version | None = strawberry.UNSET
    ) -> AsyncGenerator[Dashboard, None]:
        await wait_for(info, dashboard.NAME, given(min_version))
        db = info.context.db
        load = lambda: dashboard.read_dashboard(db)  # noqa: E731
        async for document in follow(info, dashboard.NAME, dashboard.DASHBOARD_ID, load):
            yield shared_payload(document, Dashboard.from_document)

    @strawberry.subscription(  # type: ignore[untyped-decorator]
        description="Every event after `afterVersion` (catch-up, then live), "
        "without gaps or repeats."
    )
    async def events(
        self,
        info: Info,
        after_version: Version | None = FROM_THE_START,
        types: list[str] | None = strawberry.UNSET,
    ) -> AsyncGenerator[DomainEvent, None]:
        """Reads only up to the audit trail's checkpoint: everything below it is written,
        so nothing is skipped, and it never reads a position twice. Recent events come
        from the local relay's buffer when it holds them all (projections.recent)."""
        wanted = given(types)
        if wanted is not None:
            if len(wanted) > keys.MAX_EVENT_TYPES:
                raise bad_input(f"types has at most {keys.MAX_EVENT_TYPES} names", argument="types")
            for i, name in enumerate(wanted):
                keys.text(name, f"types.{i}", keys.MAX_ID_LENGTH)
        stream = _events(info, after_version or 0, wanted)
        with OPEN_SUBSCRIPTIONS.labels(info.field_name).track_inprogress():
            async with aclosing(stream):
                async for event in stream:
                    yield event


async def _events(
    info: Info, last: int, wanted: list[str] | None
) -> AsyncGenerator[DomainEvent, None]:
    progress, db = info.context.progress, info.context.db
    while True:
        up_to = progress.position(audit.NAME)
        if up_to > last:
            batch = progress.recent_events.between(last, up_to, wanted, EVENT_BATCH)
            if batch is None:
                batch = await audit.events_between(db, last, up_to, wanted, EVENT_BATCH)
            for document in batch:
                yield DomainEvent.from_document(document)
            last = batch[-1]["_id"] if len(batch) == EVENT_BATCH else up_to
            continue
        try:
            await progress.wait_for(audit.NAME, last + 1, LIVE_WAIT)
        except NotYetConsistent:
            continue
