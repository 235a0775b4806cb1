"""Per-operation metrics (Prometheus): how many, how long, and which errors.

Operation names come from clients, so the label is bounded: the first
``MAX_OPERATION_NAMES`` distinct names are kept, later ones count as ``_other``;
an operation without a name is ``_anonymous`` and a document that did not parse
``_invalid``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterator

from graphql import GraphQLError
from prometheus_client import Counter, Histogram
from strawberry.extensions import SchemaExtension

from schema.errors import REQUEST_REFUSALS

log = logging.getLogger(__name__)

# Seconds to an answer, from fast reads to commands waiting on a busy store (the command
# bus's histogram uses them too, app.bus_metrics).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_OPERATION_NAMES = 200
_NAME = re.compile(r"[_A-Za-z][_0-9A-Za-z]{0,63}")

OPERATIONS = Counter(
    "shop_graphql_operations",
    "GraphQL operations answered, by operation name and type",
    ["operation", "type"],
    registry=None,
)
ERRORS = Counter(
    "shop_graphql_errors",
    "Errors in GraphQL answers, by operation name and extensions.code "
    "(GRAPHQL_PARSE_FAILED / GRAPHQL_VALIDATION_FAILED for invalid documents)",
    ["operation", "code"],
    registry=None,
)
DURATION = Histogram(
    "shop_graphql_operation_duration_seconds",
    "Time to answer a query or mutation (parse, validate, execute), by operation name",
    ["operation", "type"],
    buckets=LATENCY_BUCKETS,
    registry=None,
)
NOT_YET_CONSISTENT = Counter(
    "shop_not_yet_consistent",
    "Fields answered NOT_YET_CONSISTENT (the projection did not reach minVersion in time)",
    ["projection"],
    registry=None,
)
INSTRUMENTS = (OPERATIONS, ERRORS, DURATION, NOT_YET_CONSISTENT)

_seen: set[str] = set()


def operation_label(name: object) -> str:
    """The label for an operation name as the client sent it (any JSON value)."""
    if not isinstance(name, str):
        return "_anonymous" if name is None else "_other"
    if not name:
        return "_anonymous"
    if name in _seen:
        return name
    if not _NAME.fullmatch(name) or len(_seen) >= MAX_OPERATION_NAMES:
        return "_other"
    _seen.add(name)
    return name


def error_code(error: GraphQLError) -> str:
    code = (error.extensions or {}).get("code")
    if isinstance(code, str):
        return code
    if error.message.startswith("Syntax Error"):
        return "GRAPHQL_PARSE_FAILED"
    return "GRAPHQL_VALIDATION_FAILED"


class OperationMetrics(SchemaExtension):
    """Counts each operation and its errors; times queries and mutations (a
    subscription's time is its life, not an answer's)."""

    def on_operation(self) -> Iterator[None]:
        began = time.perf_counter()
        failure: BaseException | None = None
        try:
            yield
        except BaseException as error:  # refused before GraphQL (405, unknown operation)
            failure = error
            raise
        finally:
            try:
                self._count(time.perf_counter() - began, failure)
            except Exception:  # metrics never change an answer
                log.exception("counting an operation failed")

    def _count(self, took: float, failure: BaseException | None) -> None:
        """Counted however the operation ended: answered, refused by an exception, or
        (a subscription) closed by its client."""
        context = self.execution_context
        if context.graphql_document is None:
            operation, kind = "_invalid", "unknown"
        else:
            operation = operation_label(context.operation_name)
            try:
                kind = context.operation_type.value
            except Exception:  # no operation of that name: a request error
                kind = "unknown"
        OPERATIONS.labels(operation, kind).inc()
        if kind in ("query", "mutation"):
            DURATION.labels(operation, kind).observe(took)
        if failure is not None and not isinstance(failure, GeneratorExit | asyncio.CancelledError):
            refused = isinstance(failure, REQUEST_REFUSALS)
            ERRORS.labels(operation, "BAD_REQUEST" if refused else "INTERNAL_SERVER_ERROR").inc()
            return
        result = context.result
        errors = (result.errors if result is not None else None) or context.pre_execution_errors
        for error in errors or ():
            ERRORS.labels(operation, error_code(error)).inc()
