"""Subscriptions: the current document, then a message whenever its projection changes it.

Changes that land in one relay batch are coalesced: each message is the document
as of its ``version``, and versions only grow.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import strawberry
from graphql import GraphQLError

from projections import products as product_views
from schema.consistency import wait_for
from schema.context import Info
from schema.queries import PRODUCTS
from schema.scalars import Version
from schema.types import Product, given


@strawberry.type
class Subscription:
    @strawberry.subscription(description="The product now, then after every change.")  # type: ignore[untyped-decorator]
    async def product_updated(
        self, info: Info, id: strawberry.ID, min_version: Version | None = strawberry.UNSET
    ) -> AsyncGenerator[Product, None]:
        await wait_for(info, PRODUCTS, given(min_version))
        context = info.context
        last_version = -1
        async with context.progress.watch(PRODUCTS, str(id)) as changed:
            while True:
                changed.clear()
                document = await product_views.find_product(context.db, id)
                if document is None:
                    raise GraphQLError(f"no product with id {id}", extensions={"code": "NOT_FOUND"})
                if document["version"] > last_version:
                    last_version = document["version"]
                    yield Product.from_document(document)
                await changed.wait()
