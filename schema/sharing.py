"""Subscriptions executed once per change, not once per subscriber.

Executed per subscriber, a change to a product watched by 5,000 clients would run the
subscription's selection set 5,000 times on the same document. Here every subscriber of one
document gets the *same* payload object for a version (:func:`shared_payload`), and
the per-event execution is keyed by (payload, operation, variables)
(:class:`SharedEventExecutor`): the first subscriber to reach a change executes the
selection, every other subscriber with the same document and variables gets that
same result.

Why that is safe: a per-event execution depends only on its payload (the document
at one version), the operation and its variables. Whether the caller may see the
document is decided before the payload is yielded (the policy at subscribe time,
the owner check in ``orderUpdated``, the token's expiry around the source stream),
never inside the per-event execution. The parsed document is cached by text
(``schema.limits``), so one operation text is one operation node.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from graphql.pyutils import AwaitableOrValue
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

T = TypeVar("T")
Document = dict[str, Any]

KEEP_RESULTS = 512
KEEP_PAYLOADS = 1024


@dataclass
class SharingStats:
    executed: int = 0
    shared: int = 0


STATS = SharingStats()
_payloads: OrderedDict[tuple[int, Callable[..., Any]], tuple[Document, Any]] = OrderedDict()
_results: OrderedDict[tuple[int, int, str], tuple[Any, Any, Any]] = OrderedDict()


def shared_payload(document: Document, convert: Callable[[Document], T]) -> T:
    """``convert(document)``, the same object for every subscriber of this document
    version (documents come from one shared feed per document: ``projections.feeds``)."""
    key = (id(document), convert)
    entry = _payloads.get(key)
    if entry is not None and entry[0] is document:
        return entry[1]  # type: ignore[no-any-return]
    value = convert(document)
    _payloads[key] = (document, value)  # the document is held, so its id is not reused
    while len(_payloads) > KEEP_PAYLOADS:
        _payloads.popitem(last=False)
    return value


def _variables_key(values: dict[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, default=repr)


class SharedEventExecutor(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's executor, sharing subscription events' executions (see above)."""

    _per_event = False

    def build_per_event_executor(self, payload: Any) -> Any:
        executor = super().build_per_event_executor(payload)
        executor._per_event = True  # type: ignore[attr-defined]
        return executor

    def execute_operation(self, serially: bool | None = None) -> AwaitableOrValue[Any]:
        if not self._per_event:
            if hasattr(self.context_value, "executed"):
                self.context_value.executed = True
            return super().execute_operation(serially)
        payload, operation = self.root_value, self.operation
        key = (id(payload), id(operation), _variables_key(self.variable_values.coerced))
        entry = _results.get(key)
        if entry is not None and entry[0] is payload and entry[1] is operation:
            _results.move_to_end(key)
            return self._shared(entry[2], serially)
        STATS.executed += 1
        result = super().execute_operation(serially)
        if self.is_awaitable(result):
            result = asyncio.ensure_future(result)
        _results[key] = (payload, operation, result)  # both held: their ids stay theirs
        while len(_results) > KEEP_RESULTS:
            _results.popitem(last=False)
        return _awaitable(result)

    def _shared(self, result: Any, serially: bool | None) -> AwaitableOrValue[Any]:
        """Another subscriber's result, unless it holds errors: those are masked and
        logged per request (``ShopSchema.process_errors`` changes them in place), so
        each subscriber executes its own."""
        if not isinstance(result, asyncio.Future):
            if result.errors:
                STATS.executed += 1
                return super().execute_operation(serially)
            STATS.shared += 1
            return result
        return self._after(result, serially)

    async def _after(self, shared: asyncio.Future[Any], serially: bool | None) -> Any:
        result = await asyncio.shield(shared)
        if result.errors:
            STATS.executed += 1
            own = super().execute_operation(serially)
            return await own if self.is_awaitable(own) else own
        STATS.shared += 1
        return result


def _awaitable(result: Any) -> Any:
    """A result, or a shielded wait for a shared one: one subscriber going away must not
    cancel the execution the others wait for."""
    if isinstance(result, asyncio.Future):
        return asyncio.shield(result)
    return result
