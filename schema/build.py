"""Builds the Strawberry schema with its caches, limits, policies and error masking."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import strawberry
from graphql import GraphQLError, VariableDefinitionNode
from strawberry.extensions.runner import SchemaExtensionsRunner
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.schema import DEFAULT_ALLOWED_OPERATION_TYPES
from strawberry.types import ExecutionContext, ExecutionResult
from strawberry.types.base import StrawberryObjectDefinition
from strawberry.types.execution import PreExecutionError
from strawberry.types.graphql import OperationType

from schema.errors import REQUEST_REFUSALS
from schema.limits import DocumentCache, DocumentLimits, LimitExceeded, Limits
from schema.metrics import OperationMetrics
from schema.mutations import Mutation as ShopMutation
from schema.policy import POLICIES as SHOP_POLICIES
from schema.policy import Authorize, Policy, merged
from schema.queries import Query as ShopQuery
from schema.scalars import SCALARS
from schema.sharing import SharedEventExecutor
from schema.subscriptions import Subscription
from schema.tracing import GraphQLSpans
from schema.wishlist import POLICIES as WISHLIST_POLICIES
from schema.wishlist import WishlistMutation, WishlistQuery

log = logging.getLogger(__name__)

# Answers the client is meant to act on; they are not server faults.
EXPECTED_CODES = frozenset(
    {"NOT_YET_CONSISTENT", "BAD_USER_INPUT", "NOT_FOUND", "UNAUTHENTICATED", "FORBIDDEN"}
)
INTERNAL_ERROR = "INTERNAL_SERVER_ERROR"
AUTHORIZE = Authorize()

__all__ = ["POLICIES", "Mutation", "Query", "ShopSchema", "build_schema", "print_schema"]


# The served root types and who may call their fields: the shop's, and those of each
# feature's schema module.
@strawberry.type(name="Query")
class Query(WishlistQuery, ShopQuery):
    pass


@strawberry.type(name="Mutation")
class Mutation(WishlistMutation, ShopMutation):
    pass


POLICIES = merged(SHOP_POLICIES, WISHLIST_POLICIES)


class ShopSchema(strawberry.Schema):
    policies: Mapping[str, Policy] = POLICIES
    documents: DocumentCache
    """Parsed and validated documents (schema.limits)."""

    async def _prepare_operation_async(
        self, context: ExecutionContext, extensions_runner: SchemaExtensionsRunner
    ) -> PreExecutionError | None:
        """Turns a limit refused while parsing or before validation into the operation's
        errors. ``execute`` does that for any exception of an extension, but Strawberry's
        ``stream`` (WebSockets) would let it escape and answer nothing."""
        try:
            return await super()._prepare_operation_async(context, extensions_runner)
        except LimitExceeded as refused:
            context.pre_execution_errors = [refused]
            return PreExecutionError(data=None, errors=[refused])

    async def execute(
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        allowed_operation_types: Iterable[OperationType] | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        """Queries and mutations; Strawberry would run a subscription here as a plain
        field (and fail on its stream): this server streams them over WebSockets only
        (``subscribe``), so one sent over HTTP is refused like a mutation over GET."""
        allowed = set(allowed_operation_types or DEFAULT_ALLOWED_OPERATION_TYPES)
        return await super().execute(
            query, variable_values, context_value, root_value, operation_name,
            allowed - {OperationType.SUBSCRIPTION}, operation_extensions,
        )  # fmt: skip

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Masks server faults: the client gets a generic message and a request id, the
        log gets the exception under the same id. Expected answers (invalid documents,
        coded errors) are logged at debug."""
        for error in errors:
            if is_fault(error):
                request_id = request_id_of(execution_context)
                log.error(
                    "unexpected error in %s (request %s): %s",
                    ".".join(str(p) for p in error.path or ()) or "the operation",
                    request_id,
                    error.message,
                    exc_info=error.original_error,
                )
                error.message = f"Internal server error (request id {request_id})"
                error.extensions = {"code": INTERNAL_ERROR, "requestId": request_id}
            else:
                code = (error.extensions or {}).get("code")
                log.debug("GraphQL error %s: %s", code or "INVALID_DOCUMENT", error.message)


def request_id_of(execution_context: ExecutionContext | None) -> str:
    """The id the application gave the request (``Context.request_id``), or a new one for
    a request that came without (a schema executed directly, as in tests)."""
    context = execution_context.context if execution_context is not None else None
    given = getattr(context, "request_id", None)
    return given if isinstance(given, str) and given else uuid.uuid4().hex


def is_fault(error: GraphQLError) -> bool:
    """An exception nobody meant to raise: anything but a GraphQLError, from a resolver,
    a subscription's stream or an extension, except the few whose message is meant for
    the client (see :func:`_for_the_client`)."""
    original = error.original_error
    if original is None or isinstance(original, GraphQLError):
        return False
    if (error.extensions or {}).get("code"):
        return False  # coded: raised on purpose
    return error.path is not None or not _for_the_client(error, original)


def _for_the_client(error: GraphQLError, original: Exception) -> bool:
    """Errors that carry an exception yet describe the request: a variable's value that
    its type refused (graphql-core wraps the scalar's own error, pointing at the variable's
    definition), and Strawberry's "no such operation" and "operation type not allowed"."""
    if isinstance(original, REQUEST_REFUSALS):
        return True
    nodes = error.nodes or ()
    return bool(nodes) and all(isinstance(node, VariableDefinitionNode) for node in nodes)


def _authorize_root_fields(*roots: type) -> None:
    """Puts the policy check in front of every root field's resolver (see schema.policy)."""
    for root in roots:
        definition: StrawberryObjectDefinition = root.__strawberry_definition__  # type: ignore[attr-defined]
        for field in definition.fields:
            if not any(isinstance(e, Authorize) for e in field.extensions):
                field.extensions.append(AUTHORIZE)


def build_schema(
    query: type = Query,
    mutation: type = Mutation,
    *,
    limits: Limits | None = None,
    policies: Mapping[str, Policy] | None = None,
    traced: bool = False,
) -> ShopSchema:
    """The served schema; the benchmarks pass subclasses of the root types with no-op
    fields, and policies for them (a field that has one already raises
    ``DuplicatePolicy``)."""
    _authorize_root_fields(query, mutation, Subscription)
    chosen = limits or Limits()
    documents = DocumentCache(chosen.document_cache_bytes)
    schema = ShopSchema(
        query=query,
        mutation=mutation,
        subscription=Subscription,
        config=StrawberryConfig(scalar_map=SCALARS),
        # Subscribers of one document share each change's execution (schema.sharing).
        execution_context_class=SharedEventExecutor,
        # Factories: a fresh extension per request. Parsing and validation are cached
        # by the document's text, in one cache bounded in bytes.
        extensions=[
            lambda: DocumentLimits(chosen, documents),
            OperationMetrics,
            # Spans for the operation, parsing, validation and our resolvers.
            *([GraphQLSpans] if traced else []),
        ],
    )
    schema.policies = merged(POLICIES, policies or {})
    schema.documents = documents
    return schema


def print_schema() -> str:
    return build_schema().as_str() + "\n"
