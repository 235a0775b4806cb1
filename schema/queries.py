"""Queries: read-model documents only, each after its projection reached minVersion."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import strawberry
from strawberry.types.nodes import SelectedField, Selection

from projections import audit, customers, dashboard, history, orders, sales
from projections import products as product_views
from projections.paging import InvalidCursor, Page
from projections.status import projection_states
from schema import keys
from schema.consistency import wait_for
from schema.context import Info, bad_input
from schema.scalars import Version
from schema.types import (
    Customer,
    Dashboard,
    DomainEvent,
    EventConnection,
    EventEdge,
    Order,
    OrderConnection,
    OrderEdge,
    PageInfo,
    Product,
    ProductConnection,
    ProductEdge,
    ProductFilter,
    ProductSales,
    ProductSort,
    ProjectionStatus,
    given,
)

MAX_TOP_PRODUCTS = 100


def visible_order(info: Info, document: dict[str, Any]) -> bool:
    """Whether the caller may see this order (schema.policy: OWN_ORDER)."""
    scope = info.context.principal.order_scope
    return scope is None or document.get("customer", {}).get("id") == scope


def check_page_size(info: Info, first: int | None) -> int:
    limit = info.context.max_page_size
    if first is None or not 0 <= first <= limit:
        raise bad_input(f"first must be between 0 and {limit}", argument="first")
    return first


def page_info(page: Page) -> PageInfo:
    return PageInfo(
        has_next_page=page.has_next_page, end_cursor=page.cursors[-1] if page.cursors else None
    )


def order_connection(page: Page) -> OrderConnection:
    return OrderConnection(
        edges=[
            OrderEdge(cursor=cursor, node=Order.from_document(document))
            for cursor, document in zip(page.cursors, page.documents, strict=True)
        ],
        page_info=page_info(page),
        total_count=page.total_count or 0,
    )


async def read_page(
    info: Info,
    projection: str,
    first: int | None,
    min_version: Version | None,
    read: Callable[[int, bool], Awaitable[Page]],
) -> Page:
    """One page of a list field: its size checked, ``minVersion`` awaited, cursor errors coded.

    ``read(size, count)``: ``count`` is whether the client selected ``totalCount``,
    which costs a second query (a full scan on FerretDB).
    """
    size = check_page_size(info, first)
    await wait_for(info, projection, given(min_version))
    try:
        count = any(selects(f.selections, "totalCount") for f in info.selected_fields)
        return await read(size, count)
    except InvalidCursor as error:
        raise bad_input(str(error), argument="after") from error


async def no_page(count: bool) -> Page:
    """The page of a list whose key no document can have."""
    return Page([], [], False, 0 if count else None)


def selects(selections: Sequence[Selection], name: str) -> bool:
    """Whether the field ``name`` is among ``selections`` (through fragments too)."""
    for selection in selections:
        if isinstance(selection, SelectedField):
            if selection.name == name:
                return True
        elif selects(selection.selections, name):
            return True
    return False


def _filter(f: ProductFilter | None) -> product_views.ProductFilter:
    if f is None:
        return product_views.ProductFilter()
    status = given(f.status)
    search, category = given(f.search), given(f.category)
    if search is not None:
        search = keys.text(search, "filter.search", keys.MAX_SEARCH_LENGTH)
    if category is not None:
        category = keys.text(category, "filter.category", keys.MAX_CATEGORY_LENGTH)
    return product_views.ProductFilter(
        search=search,
        category=category,
        status=None if status is None else status.value,
        min_price_cents=given(f.min_price_cents),
        max_price_cents=given(f.max_price_cents),
        in_stock=given(f.in_stock),
    )


@strawberry.type
class Query:
    @strawberry.field
    async def product(
        self, info: Info, id: strawberry.ID, min_version: Version | None = strawberry.UNSET
    ) -> Product | None:
        key = keys.document_id(id)
        await wait_for(info, product_views.NAME, given(min_version))
        if key is None:
            return None
        document = await product_views.find_product(info.context.db, key)
        return None if document is None else Product.from_document(document)

    @strawberry.field
    async def product_by_sku(
        self, info: Info, sku: str, min_version: Version | None = strawberry.UNSET
    ) -> Product | None:
        key = keys.sku(sku)
        await wait_for(info, product_views.NAME, given(min_version))
        if key is None:
            return None
        document = await product_views.find_product_by_sku(info.context.db, key)
        return None if document is None else Product.from_document(document)

    @strawberry.field
    async def products(
        self,
        info: Info,
        filter: ProductFilter | None = strawberry.UNSET,
        sort: ProductSort | None = ProductSort.NAME_ASC,
        first: int | None = 20,
        after: str | None = strawberry.UNSET,
        min_version: Version | None = strawberry.UNSET,
    ) -> ProductConnection:
        order = product_views.ProductSort((sort or ProductSort.NAME_ASC).value)
        wanted = _filter(given(filter))
        page = await read_page(
            info, product_views.NAME, first, min_version,
            lambda size, count: product_views.list_products(
                info.context.db, wanted, order, size, given(after), count
            ),
        )  # fmt: skip
        edges = [
            ProductEdge(cursor=cursor, node=Product.from_document(document))
            for cursor, document in zip(page.cursors, page.documents, strict=True)
        ]
        return ProductConnection(
            edges=edges, page_info=page_info(page), total_count=page.total_count or 0
        )

    @strawberry.field
    async def customer(
        self, info: Info, id: strawberry.ID, min_version: Version | None = strawberry.UNSET
    ) -> Customer | None:
        key = keys.document_id(id)
        await wait_for(info, customers.NAME, given(min_version))
        if key is None:
            return None
        document = await customers.find_customer(info.context.db, key)
        return None if document is None else Customer.from_document(document)

    @strawberry.field
    async def order(
        self, info: Info, id: strawberry.ID, min_version: Version | None = strawberry.UNSET
    ) -> Order | None:
        key = keys.document_id(id)
        await wait_for(info, orders.NAME, given(min_version))
        if key is None:
            return None
        document = await orders.find_order(info.context.db, key)
        if document is None or not visible_order(info, document):
            return None  # another customer's order looks missing
        return Order.from_document(document)

    @strawberry.field(description="A customer's orders, newest first.")  # type: ignore[untyped-decorator]
    async def order_history(
        self,
        info: Info,
        customer_id: strawberry.ID,
        first: int | None = 20,
        after: str | None = strawberry.UNSET,
        min_version: Version | None = strawberry.UNSET,
    ) -> OrderConnection:
        db, key = info.context.db, keys.document_id(customer_id, "customerId")
        page = await read_page(
            info, history.NAME, first, min_version,
            lambda size, count: (
                history.order_history(db, key, size, given(after), count)
                if key is not None else no_page(count)
            ),
        )  # fmt: skip
        return order_connection(page)

    @strawberry.field(description="PLACED orders waiting to ship, oldest first.")  # type: ignore[untyped-decorator]
    async def shipping_queue(
        self,
        info: Info,
        first: int | None = 50,
        after: str | None = strawberry.UNSET,
        min_version: Version | None = strawberry.UNSET,
    ) -> OrderConnection:
        db = info.context.db
        page = await read_page(
            info, orders.NAME, first, min_version,
            lambda size, count: orders.shipping_queue(db, size, given(after), count),
        )  # fmt: skip
        return order_connection(page)

    @strawberry.field(description="Best sellers by units sold.")  # type: ignore[untyped-decorator]
    async def top_products(
        self,
        info: Info,
        limit: int | None = 10,
        min_version: Version | None = strawberry.UNSET,
    ) -> list[ProductSales]:
        # Like every page, at most SHOP_MAX_PAGE_SIZE (which the query cost assumes).
        most = min(MAX_TOP_PRODUCTS, info.context.max_page_size)
        if limit is None or not 0 <= limit <= most:
            raise bad_input(f"limit must be between 0 and {most}", argument="limit")
        await wait_for(info, sales.NAME, given(min_version))
        if limit == 0:
            return []
        documents = await sales.top_products(info.context.db, limit)
        return [ProductSales.from_document(d) for d in documents]

    @strawberry.field
    async def dashboard(
        self, info: Info, min_version: Version | None = strawberry.UNSET
    ) -> Dashboard:
        await wait_for(info, dashboard.NAME, given(min_version))
        return Dashboard.from_document(await dashboard.read_dashboard(info.context.db))

    @strawberry.field(description="The audit trail: every event of one aggregate, oldest first.")  # type: ignore[untyped-decorator]
    async def audit_trail(
        self,
        info: Info,
        aggregate_id: strawberry.ID,
        first: int | None = 100,
        after: str | None = strawberry.UNSET,
        min_version: Version | None = strawberry.UNSET,
    ) -> EventConnection:
        db, key = info.context.db, keys.document_id(aggregate_id, "aggregateId")
        page = await read_page(
            info, audit.NAME, first, min_version,
            lambda size, count: (
                audit.audit_trail(db, key, size, given(after))
                if key is not None else no_page(count)
            ),
        )  # fmt: skip
        return EventConnection(
            edges=[
                EventEdge(cursor=cursor, node=DomainEvent.from_document(document))
                for cursor, document in zip(page.cursors, page.documents, strict=True)
            ],
            page_info=page_info(page),
        )

    @strawberry.field
    async def projections(self, info: Info) -> list[ProjectionStatus]:
        return [
            ProjectionStatus(
                name=s.name,
                checkpoint=Version(s.position),
                head_version=Version(s.head),
                lag=s.lag,
                state=s.state,
                last_error=s.last_error,
                updated_at=s.updated_at,
            )
            for s in await projection_states(info.context.db)
        ]
