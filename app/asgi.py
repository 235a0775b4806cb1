"""The Starlette application: GraphQL (HTTP and WebSocket), GraphiQL, health and metrics."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import strawberry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL

from app.bootstrap import Services, bootstrap
from app.health import healthz, readyz
from app.metrics import metrics, registry_for
from app.settings import Role, Settings
from schema.build import build_schema
from schema.context import MIN_VERSION_HEADER, Context, parse_min_version_header


class ShopGraphQL(GraphQL[Context, None]):
    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        services: Services = request.state.services
        version, error = parse_min_version_header(request.headers.get(MIN_VERSION_HEADER))
        return Context(
            bus=services.bus,
            db=services.db,
            progress=services.progress,
            feeds=services.feeds,
            consistency_timeout=services.settings.shop_consistency_timeout,
            max_page_size=services.settings.shop_max_page_size,
            header_min_version=version,
            header_error=error,
        )


def create_app(
    settings: Settings | None = None,
    role: Role = Role.ALL,
    schema: strawberry.Schema | None = None,
) -> Starlette:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with bootstrap(settings, role) as services:
            yield {"services": services, "metrics": registry_for(services)}

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
    ]
    if role is not Role.RELAY:
        graphql = ShopGraphQL(
            schema or build_schema(),
            graphql_ide="graphiql",
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL),
        )
        routes += [Route("/graphql", graphql), WebSocketRoute("/graphql", graphql)]
    return Starlette(routes=routes, lifespan=lifespan)
