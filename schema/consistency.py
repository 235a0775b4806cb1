"""The minVersion wait: a field answers only once its projection has caught up."""

from __future__ import annotations

from contextlib import nullcontext

from graphql import GraphQLError, OperationType

from projections.progress import NotYetConsistent
from schema.context import Info, bad_input
from schema.metrics import NOT_YET_CONSISTENT
from schema.throttle import Throttled


async def wait_for(info: Info, projection: str, min_version: int | None) -> None:
    """Waits until ``projection`` has applied ``min_version`` (or the X-Min-Version header).

    Raises the contract's NOT_YET_CONSISTENT error if the server's bounded wait ends first.
    A subscription's errors carry the field's path themselves: its wait runs in its
    event stream, where graphql-core adds none (a query's errors get their path and
    locations from graphql-core).
    """
    context = info.context
    if min_version is None:
        if context.header_error is not None:
            raise bad_input(context.header_error, path=_path(info))
        min_version = context.header_min_version
    if not min_version or context.progress.position(projection) >= min_version:
        return
    try:
        # Callers with a valid token are known: only anonymous ones are held to a budget.
        throttles = None if context.principal.valid() else context.throttles
        with nullcontext() if throttles is None else throttles.waits.hold(context.client):
            await context.progress.wait_for(projection, min_version, context.consistency_timeout)
    except Throttled as refused:
        raise GraphQLError(
            f"this client has {refused.maximum:.0f} minVersion waits open already; "
            f"retry once one has answered (limit: {refused.setting})",
            path=_path(info),
            extensions={
                "code": "LIMIT_EXCEEDED",
                "limit": refused.setting,
                "maximum": int(refused.maximum),
            },
        ) from None
    except NotYetConsistent as error:
        NOT_YET_CONSISTENT.labels(error.projection).inc()
        raise GraphQLError(
            str(error),
            path=_path(info),
            extensions={
                "code": "NOT_YET_CONSISTENT",
                "minVersion": error.min_version,
                "currentVersion": error.current_version,
                "projection": error.projection,
            },
        ) from error


def _path(info: Info) -> list[str | int] | None:
    """The field's path for a subscription's error; None for a query's (graphql-core
    adds it with the locations, which an error with a path would go without)."""
    if info.operation.operation == OperationType.SUBSCRIPTION:
        return info.path.as_list()
    return None
