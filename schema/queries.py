"""Queries: read-model documents only, each after its projection reached minVersion."""

from __future__ import annotations

from datetime import UTC, datetime

import strawberry

from projections import checkpoints, lease
from projections import products as product_views
from projections.registry import all_projections
from schema.consistency import wait_for
from schema.context import Info, bad_input
from schema.scalars import Version
from schema.types import (
    PageInfo,
    Product,
    ProductConnection,
    ProductEdge,
    ProductFilter,
    ProductSort,
    ProjectionStatus,
    given,
)

PRODUCTS = "products"


def check_page_size(info: Info, first: int | None) -> int:
    limit = info.context.max_page_size
    if first is None or not 0 <= first <= limit:
        raise bad_input(f"first must be between 0 and {limit}", argument="first")
    return first


def _filter(f: ProductFilter | None) -> product_views.ProductFilter:
    if f is None:
        return product_views.ProductFilter()
    status = given(f.status)
    return product_views.ProductFilter(
        search=given(f.search),
        category=given(f.category),
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
        await wait_for(info, PRODUCTS, given(min_version))
        document = await product_views.find_product(info.context.db, id)
        return None if document is None else Product.from_document(document)

    @strawberry.field
    async def product_by_sku(
        self, info: Info, sku: str, min_version: Version | None = strawberry.UNSET
    ) -> Product | None:
        await wait_for(info, PRODUCTS, given(min_version))
        document = await product_views.find_product_by_sku(info.context.db, sku)
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
        size = check_page_size(info, first)
        await wait_for(info, PRODUCTS, given(min_version))
        order = product_views.ProductSort((sort or ProductSort.NAME_ASC).value)
        try:
            page = await product_views.list_products(
                info.context.db, _filter(given(filter)), order, size, given(after)
            )
        except product_views.InvalidCursor as error:
            raise bad_input(str(error), argument="after") from error
        edges = [
            ProductEdge(cursor=cursor, node=Product.from_document(document))
            for cursor, document in zip(page.cursors, page.documents, strict=True)
        ]
        return ProductConnection(
            edges=edges,
            page_info=PageInfo(
                has_next_page=page.has_next_page,
                end_cursor=page.cursors[-1] if page.cursors else None,
            ),
            total_count=page.total_count,
        )

    @strawberry.field
    async def projections(self, info: Info) -> list[ProjectionStatus]:
        db = info.context.db
        stored = await checkpoints.load_all(db)
        relay_alive = await lease.holder_alive(db)
        head = max((c.head for c in stored.values()), default=0)
        statuses = []
        for projection in all_projections():
            checkpoint = stored.get(projection.name)
            position = checkpoint.position if checkpoint else 0
            lag = max(head - position, 0)
            last_error = checkpoint.last_error if checkpoint else None
            if not relay_alive:
                state = "STOPPED"
            elif last_error:
                state = "STALLED"
            else:
                state = "CATCHING_UP" if lag else "RUNNING"
            statuses.append(
                ProjectionStatus(
                    name=projection.name,
                    checkpoint=Version(position),
                    head_version=Version(max(head, position)),
                    lag=lag,
                    state=state,
                    last_error=last_error,
                    updated_at=checkpoint.updated_at if checkpoint else None,
                )
            )
        return statuses


def utcnow() -> datetime:
    return datetime.now(UTC)
