"""The shop server with two no-op fields, the transport ceiling the measures compare with.

``python -m bench.server --port N`` serves it like ``cqrs-shop serve``: same app,
same schema extensions, same uvicorn settings, only ``noop`` added to the roots.
"""

from __future__ import annotations

import argparse

import strawberry
import uvicorn

from app import logging as shop_logging
from app.asgi import create_app
from app.cli import uvicorn_config
from app.settings import Role, Settings
from schema.build import build_schema
from schema.mutations import Mutation
from schema.queries import Query


@strawberry.type
class BenchQuery(Query):
    @strawberry.field(description="Does nothing: the cost of a query with no work in it.")  # type: ignore[untyped-decorator]
    def noop(self) -> bool:
        return True


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
    args = parser.parse_args()
    settings = Settings()
    shop_logging.configure(settings.log_level, settings.log_format)
    app = create_app(settings, Role.ALL, build_schema(BenchQuery, BenchMutation))
    uvicorn.Server(uvicorn_config(app, "127.0.0.1", args.port)).run()


if __name__ == "__main__":
    main()
