"""The shop server with two no-op fields, the transport ceiling the measures compare with.

``python -m bench.server --port N`` serves it like ``cqrs-shop serve``: same app,
same schema extensions, same uvicorn settings, only ``noop`` added to the roots.
"""

from __future__ import annotations

import argparse

import strawberry
import uvicorn

from app import logging as shop_logging
from app.asgi import create_app, limits_of
from app.cli import uvicorn_config
from app.settings import Role, Settings
from projections import products
from schema.build import build_schema
from schema.consistency import wait_for
from schema.context import Info
from schema.mutations import Mutation
from schema.policy import ADMINS, ANYONE
from schema.queries import Query
from schema.scalars import Version
from schema.types import Product, given


@strawberry.type
class BenchQuery(Query):
    @strawberry.field(description="Does nothing: the cost of a query with no work in it.")  # type: ignore[untyped-decorator]
    def noop(self) -> bool:
        return True

    @strawberry.field(description="product(id) read from the store every time: no cache.")  # type: ignore[untyped-decorator]
    async def product_from_store(
        self, info: Info, id: strawberry.ID, min_version: Version | None = strawberry.UNSET
    ) -> Product | None:
        await wait_for(info, products.NAME, given(min_version))
        document = await info.context.db[products.COLLECTION].find_one({"_id": id})
        return None if document is None else Product.from_document(document)


@strawberry.type
class BenchMutation(Mutation):
    @strawberry.mutation(  # type: ignore[untyped-decorator]
        description="Does nothing: the cost of a mutation with no work in it."
    )
    def noop(self) -> bool:
        return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--role", default="all", choices=[r.value for r in Role])
    args = parser.parse_args()
    settings = Settings()
    shop_logging.configure(settings.log_level, settings.log_format)
    # The no-op query is as open as a product query (P4), the no-op mutation needs the
    # same admin token as the commands it is compared with (P1).
    policies = {"Query.noop": ANYONE, "Query.productFromStore": ANYONE, "Mutation.noop": ADMINS}
    schema = build_schema(BenchQuery, BenchMutation, limits=limits_of(settings), policies=policies)
    app = create_app(settings, Role(args.role), schema)
    uvicorn.Server(uvicorn_config(app, "127.0.0.1", args.port, settings)).run()


if __name__ == "__main__":
    main()
