"""The Starlette application: GraphQL (HTTP and WebSocket), GraphiQL, health and metrics."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import strawberry
from graphql import GraphQLError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ConnectionInitMessage,
    SubscribeMessage,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import (
    ConnectionInitMessage as LegacyConnectionInitMessage,
)
from strawberry.subscriptions.protocols.graphql_ws.types import ErrorMessage, StartMessage

from app.auth import ANONYMOUS
from app.bootstrap import Services, bootstrap
from app.guards import TransportLimits
from app.health import healthz, readyz
from app.metrics import metrics, registry_for
from app.request_id import RequestId
from app.settings import Role, Settings
from schema.build import build_schema
from schema.context import MIN_VERSION_HEADER, Context, parse_min_version_header
from schema.limits import Limits

# 4403: the graphql-transport-ws protocol's "Forbidden"; close reasons fit in 123 bytes.
FORBIDDEN_CLOSE = 4403
MAX_CLOSE_REASON = 120


def _authorization(params: Mapping[str, Any] | None) -> str | None:
    """The connection_init payload's Authorization value, its key in any case: at the
    top (GraphiQL sends its Headers tab so) or under ``headers`` (Apollo's clients)."""
    for key, value in (params or {}).items():
        if isinstance(key, str) and key.lower() == "authorization" and isinstance(value, str):
            return value
    nested = (params or {}).get("headers")
    return _authorization(nested) if isinstance(nested, Mapping) else None


async def _authenticate_socket(context: Context, params: Mapping[str, Any] | None) -> str | None:
    """Sets the socket's principal; returns why the socket must close, if it must."""
    authorization = _authorization(params) or context.upgrade_authorization
    if authorization is None or context.authenticator is None:
        return None
    principal = await context.authenticator.principal(authorization)
    if principal is ANONYMOUS:  # a blank value: anonymous, as over HTTP
        return None
    if not principal.valid():
        return principal.why_not_valid()[:MAX_CLOSE_REASON]
    context.principal = principal
    return None


def _limit_extensions(limit: int) -> dict[str, Any]:
    setting = "SHOP_MAX_SUBSCRIPTIONS_PER_CONNECTION"
    return {"code": "LIMIT_EXCEEDED", "limit": setting, "maximum": limit}


def _too_many(limit: int) -> str:
    return (
        f"too many operations on this connection (limit {limit}: "
        "SHOP_MAX_SUBSCRIPTIONS_PER_CONNECTION)"
    )


class TransportWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        params = message.get("payload")
        if not self.connection_init_received and isinstance(params, dict | None):
            refused = await _authenticate_socket(self.context, params)
            if refused is not None:
                self.connection_init_received = True
                if self.connection_init_timeout_task:
                    self.connection_init_timeout_task.cancel()
                await self.websocket.close(code=FORBIDDEN_CLOSE, reason=refused)
                return
        await super().handle_connection_init(message)

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        limit = self.view.operations_per_connection  # type: ignore[attr-defined]
        if self.connection_acknowledged and len(self.operations) >= limit:
            error = GraphQLError(_too_many(limit), extensions=_limit_extensions(limit))
            await self.send_message(
                {"id": message["id"], "type": "error", "payload": [error.formatted]}
            )
            return
        await super().handle_subscribe(message)


class LegacyWSHandler(BaseGraphQLWSHandler[Context, None]):
    async def handle_connection_init(self, message: LegacyConnectionInitMessage) -> None:
        params = message.get("payload")
        if isinstance(params, dict | None):
            refused = await _authenticate_socket(self.context, params)
            if refused is not None:
                await self.send_message(
                    {"type": "connection_error", "payload": {"message": refused}}
                )
                await self.websocket.close(code=FORBIDDEN_CLOSE, reason=refused)
                return
        await super().handle_connection_init(message)

    async def handle_start(self, message: StartMessage) -> None:
        limit = self.view.operations_per_connection  # type: ignore[attr-defined]
        if message["id"] not in self.tasks and len(self.tasks) >= limit:
            refusal: ErrorMessage = {
                "type": "error",
                "id": message["id"],
                "payload": {"message": _too_many(limit), "extensions": _limit_extensions(limit)},
            }
            await self.send_message(refusal)
            return
        await super().handle_start(message)


class ShopGraphQL(GraphQL[Context, None]):
    graphql_transport_ws_handler_class = TransportWSHandler
    graphql_ws_handler_class = LegacyWSHandler

    def __init__(self, schema: strawberry.Schema, settings: Settings) -> None:
        super().__init__(
            schema,
            graphql_ide="graphiql",
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL),
            # Our handlers enforce it with an error that names the setting.
            max_subscriptions_per_connection=None,
            allowed_origins=settings.shop_cors_origins,
        )
        self.operations_per_connection = settings.shop_max_subscriptions_per_connection

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        services: Services = request.state.services
        version, error = parse_min_version_header(request.headers.get(MIN_VERSION_HEADER))
        authorization = request.headers.get("authorization")
        context = Context(
            bus=services.bus,
            db=services.db,
            progress=services.progress,
            feeds=services.feeds,
            consistency_timeout=services.settings.shop_consistency_timeout,
            max_page_size=services.settings.shop_max_page_size,
            header_min_version=version,
            header_error=error,
        )
        if isinstance(request, WebSocket):
            # Authenticated once the client's connection_init arrives (see the handlers).
            context.authenticator = services.auth
            context.upgrade_authorization = authorization
        elif services.auth is not None:
            context.principal = await services.auth.principal(authorization)
        return context


def limits_of(settings: Settings) -> Limits:
    return Limits(
        max_tokens=settings.shop_max_tokens,
        max_depth=settings.shop_max_depth,
        max_aliases=settings.shop_max_aliases,
        max_cost=settings.shop_max_cost,
        max_page_size=settings.shop_max_page_size,
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
        graphql = ShopGraphQL(schema or build_schema(limits=limits_of(settings)), settings)
        routes += [Route("/graphql", graphql), WebSocketRoute("/graphql", graphql)]
    middleware = [
        Middleware(RequestId),
        Middleware(
            TransportLimits,
            max_body_bytes=settings.shop_max_body_bytes,
            max_ws_message_bytes=settings.shop_max_ws_message_bytes,
            max_sockets=settings.shop_max_sockets,
        ),
    ]
    if settings.shop_cors_origins:
        cors = Middleware(
            CORSMiddleware,
            allow_origins=settings.shop_cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["authorization", "content-type", "x-min-version", "x-request-id"],
            expose_headers=["x-request-id"],
            max_age=600,
        )
        middleware.insert(0, cors)
    return Starlette(routes=routes, lifespan=lifespan, middleware=middleware)
