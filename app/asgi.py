"""The Starlette application: GraphQL (HTTP and WebSocket), GraphiQL, health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import strawberry
from cross_web import AsyncHTTPRequestAdapter, HTTPException
from graphql import GraphQLError
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.schema.exceptions import InvalidOperationTypeError
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
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType

from app import graphiql, tracing
from app.bootstrap import Services, bootstrap
from app.guards import TransportLimits
from app.health import healthz, readyz
from app.metrics import metrics, registry_for
from app.request_id import RequestId, current_request_id
from app.settings import Role, Settings
from domain import tracing as domain_tracing
from domain.identity import ANONYMOUS
from schema.build import build_schema
from schema.context import MIN_VERSION_HEADER, Context, parse_min_version_header
from schema.limits import Limits
from schema.throttle import Throttles

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


# A request's JSON nests at most this deep: the deepest input of the schema needs 5.
MAX_JSON_DEPTH = 32
BODY_NOT_AN_OBJECT = "the request body must be a JSON object"
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class RefusedJSON(json.JSONDecodeError):
    """JSON that parses but that the server does not take (too deep, a lone surrogate,
    not an object). A ``JSONDecodeError``, so that a WebSocket message like this is
    refused as invalid JSON (close 4400) by Strawberry's handlers."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, "", 0)
        self.reason = reason


def decode_request_json(data: str | bytes) -> object:
    """JSON of a request (its body, a GET's variables, a socket's message), refused as
    :class:`RefusedJSON` when it is not valid UTF-8, nests deeper than
    ``MAX_JSON_DEPTH``, holds a lone surrogate (no store, and no UTF-8 encoder, can
    take one), or is a single number, string or boolean."""
    try:
        # Strictly UTF-8 (json.loads would guess UTF-16 or 32, and let UTF-8-encoded
        # surrogates through).
        text = data if isinstance(data, str) else data.decode("utf-8")
    except UnicodeDecodeError:
        raise RefusedJSON("the request is not valid UTF-8") from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise RefusedJSON(f"the JSON nests deeper than {MAX_JSON_DEPTH} levels") from None
    if value is not None and not isinstance(value, dict | list):
        raise RefusedJSON("the JSON must be an object")
    _check_json(value, surrogates=_SURROGATE_ESCAPE.search(text) is not None)
    return value


def _check_json(value: object, surrogates: bool) -> None:
    """Walks the containers (and, when the text has surrogate escapes, the strings)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[object] = (
                itertools.chain(item.keys(), item.values()) if surrogates else item.values()
            )
        elif isinstance(item, list):
            children = item
        else:
            if surrogates and isinstance(item, str) and not _encodable(item):
                raise RefusedJSON("the JSON holds a lone surrogate (\\uD800-\\uDFFF unpaired)")
            continue
        if depth > MAX_JSON_DEPTH:
            raise RefusedJSON(f"the JSON nests deeper than {MAX_JSON_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children)


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


SUBSCRIPTIONS_OVER_WEBSOCKET = (
    "subscriptions run over a WebSocket to this URL "
    "(graphql-transport-ws or graphql-ws), not over HTTP"
)
GRAPHQL_RESPONSE = "application/graphql-response+json"
JSON = "application/json"


def response_media_type(accept: str | None) -> str:
    """The media type of a GraphQL over HTTP answer for an ``Accept`` header.

    ``application/graphql-response+json`` when the client prefers it (by quality, then by
    its order in the header); otherwise ``application/json``, the legacy default, which is
    also the answer to no header, ``*/*``, ``application/*`` and to headers naming
    neither (the spec lets a server disregard those rather than answer 406, which keeps
    odd clients working).
    """
    best, best_quality = JSON, 0.0
    for media_range in (accept or "").split(","):
        kind, _, params = media_range.strip().partition(";")
        kind = kind.strip().lower()
        if kind not in (GRAPHQL_RESPONSE, JSON, "*/*", "application/*"):
            continue
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > best_quality:
            best = GRAPHQL_RESPONSE if kind == GRAPHQL_RESPONSE else JSON
            best_quality = quality
    return best


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
        self.throttles = Throttles.of(
            settings.shop_anonymous_signups_per_minute,
            settings.shop_anonymous_signup_burst,
            settings.shop_anonymous_waits_per_client,
        )

    def decode_json(self, data: str | bytes) -> object:
        return decode_request_json(data)

    def parse_json(self, data: str | bytes) -> Any:
        try:
            return self.decode_json(data)
        except RefusedJSON as refused:
            raise HTTPException(400, refused.reason) from refused
        except json.JSONDecodeError as error:
            raise HTTPException(400, "Unable to parse request body as JSON") from error

    async def parse_http_body(
        self, request: AsyncHTTPRequestAdapter
    ) -> GraphQLRequestData | list[GraphQLRequestData]:
        if request.method == "POST" and (await request.get_body()).strip() == b"null":
            raise HTTPException(400, BODY_NOT_AN_OBJECT)  # Strawberry expects a mapping
        return await super().parse_http_body(request)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope=scope, receive=receive)
        try:
            response = await self.run(request)
        except HTTPException as refused:
            response = _refusal(request, refused)
        except ClientDisconnect:
            # Gone before its body arrived whole: nobody to answer, nothing to log.
            return
        await response(scope, receive, send)

    async def execute_single(
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        sub_response: Response,
        context: Context,
        root_value: None,
        request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        try:
            return await super().execute_single(
                request, request_adapter, sub_response, context, root_value, request_data
            )
        except HTTPException as refused:
            wrong = refused.__cause__
            if not isinstance(wrong, InvalidOperationTypeError):
                raise
            if wrong.operation_type is OperationType.SUBSCRIPTION:
                raise HTTPException(400, SUBSCRIPTIONS_OVER_WEBSOCKET) from refused
            if request_adapter.method == "GET":  # GraphQL over HTTP: a mutation is 405
                raise HTTPException(405, refused.reason) from refused
            raise

    async def render_graphql_ide(self, request: Request) -> Response:
        return graphiql.render()

    async def get_sub_response(self, request: Request | WebSocket) -> Response:
        sub_response = await super().get_sub_response(request)
        # Read back by process_result and create_response, which are not given the request.
        sub_response.media_type = response_media_type(request.headers.get("accept"))
        request.state.sub_response = sub_response
        return sub_response

    def create_response(
        self,
        response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse],
        sub_response: Response,
    ) -> Response:
        response = super().create_response(response_data, sub_response)
        if sub_response.media_type == GRAPHQL_RESPONSE:
            response.headers["content-type"] = f"{GRAPHQL_RESPONSE}; charset=utf-8"
        return response

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        """GraphQL over HTTP: with ``application/graphql-response+json``, a request that
        failed before executing (parse, validation, variables, limits) is answered 400
        without a ``data`` entry; once execution began it is 200, even if ``data`` is null.
        ``application/json`` answers 200 either way, as old clients expect."""
        answer = await super().process_result(request, result)
        context = getattr(request.state, "graphql_context", None)
        if (
            context is not None
            and not context.executed
            and result.errors
            and request.state.sub_response.media_type == GRAPHQL_RESPONSE
        ):
            answer.pop("data", None)
            request.state.sub_response.status_code = 400
        return answer

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
            admin=services.admin,
            client=request.client.host if request.client else "",
            throttles=self.throttles,
            request_id=current_request_id(),
        )
        if isinstance(request, WebSocket):
            # Authenticated once the client's connection_init arrives (see the handlers).
            context.authenticator = services.auth
            context.upgrade_authorization = authorization
        else:
            request.state.graphql_context = context
            if services.auth is not None:
                context.principal = await services.auth.principal(authorization)
        return context


def _refusal(request: Request, refused: HTTPException) -> Response:
    """A request refused before GraphQL (bad JSON, no query, wrong method): its status,
    with the reason as a GraphQL error in the negotiated media type."""
    media_type = response_media_type(request.headers.get("accept"))
    error = {"message": refused.reason, "extensions": {"code": "BAD_REQUEST"}}
    headers = {"allow": "GET, POST"} if refused.status_code == 405 else None
    return Response(
        json.dumps({"errors": [error]}),
        status_code=refused.status_code,
        headers=headers,
        media_type=f"{media_type}; charset=utf-8",
    )


def limits_of(settings: Settings) -> Limits:
    return Limits(
        max_tokens=settings.shop_max_tokens,
        max_depth=settings.shop_max_depth,
        max_aliases=settings.shop_max_aliases,
        max_cost=settings.shop_max_cost,
        max_page_size=settings.shop_max_page_size,
        document_cache_bytes=settings.shop_document_cache_bytes,
        max_document_length=settings.shop_max_document_length,
    )


def create_app(
    settings: Settings | None = None,
    role: Role = Role.ALL,
    schema: strawberry.Schema | None = None,
) -> Starlette:
    settings = settings or Settings()

    traced = tracing.configure(settings.shop_otlp_endpoint, settings.shop_service_name, role.value)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[dict[str, Any]]:
        try:
            async with bootstrap(settings, role) as services:
                yield {"services": services, "metrics": registry_for(services)}
        finally:
            # Sends what is buffered; a collector that does not answer delays exit 5 s at most.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.to_thread(domain_tracing.shutdown), 5.0)

    routes: list[BaseRoute] = [Route("/healthz", healthz), Route("/readyz", readyz)]
    if settings.shop_metrics_port is None:  # else on that port alone: create_metrics_app
        routes.append(Route("/metrics", metrics))
    if role is not Role.RELAY:
        graphql = ShopGraphQL(
            schema or build_schema(limits=limits_of(settings), traced=traced), settings
        )
        routes += [Route("/graphql", graphql), WebSocketRoute("/graphql", graphql)]
        routes += graphiql.routes
    middleware = [
        Middleware(RequestId),
        Middleware(
            TransportLimits,
            max_body_bytes=settings.shop_max_body_bytes,
            max_ws_message_bytes=settings.shop_max_ws_message_bytes,
            max_sockets=settings.shop_max_sockets,
        ),
    ]
    if traced:
        # The request's span (continuing a caller's traceparent); WebSockets get one per
        # connection, not one per message.
        middleware.insert(
            0,
            Middleware(
                OpenTelemetryMiddleware,
                excluded_urls="/healthz,/readyz,/metrics,/graphiql/",
                exclude_spans=["receive", "send"],
            ),
        )
    if settings.shop_cors_origins:
        cors = Middleware(
            CORSMiddleware,
            allow_origins=settings.shop_cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=[
                "authorization",
                "content-type",
                "x-min-version",
                "x-request-id",
                "traceparent",
                "tracestate",
            ],
            expose_headers=["x-request-id"],
            max_age=600,
        )
        middleware.insert(0, cors)
    return Starlette(routes=routes, lifespan=lifespan, middleware=middleware)


def create_metrics_app() -> Starlette:
    """``/metrics`` alone, for ``SHOP_METRICS_PORT``: it has no lifespan of its own, its
    requests carry the main app's lifespan state (see ``app.http.MetricsListener``)."""
    return Starlette(routes=[Route("/metrics", metrics)])
