"""Tracing with OpenTelemetry (the API only; ``app.tracing`` installs the SDK, and only
when ``SHOP_OTLP_ENDPOINT`` names a collector).

One trace follows a write from the HTTP request through GraphQL, the command and its
transaction, to the relay batch and each projection that applied its events: the
command's trace context travels in its outbox events' metadata (``traceContext``, W3C
``traceparent``), and the relay, which applies events of many requests at once, records
for each traced event a span in that event's trace covering its batch, with one child
per projection. Group commit writes many commands in one transaction: the transaction
span is a child of the first command's and links the others'.

Log lines emitted inside a span carry its ``trace_id`` and ``span_id``.

Everything here is cheap when tracing is off: the spans are OpenTelemetry's no-op ones
and nothing is added to the outbox.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, MutableMapping
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind

TRACER = trace.get_tracer("cqrs_shop")
METADATA_KEY = "traceContext"

_provider: Any = None


def enabled() -> bool:
    return _provider is not None


def enable(provider: Any) -> None:
    """Called by ``app.tracing.configure`` once it installed the SDK."""
    global _provider
    _provider = provider


def shutdown() -> None:
    """Sends the spans still buffered (at exit)."""
    if _provider is not None:
        _provider.shutdown()


def span(name: str, **options: Any) -> AbstractContextManager[trace.Span | None]:
    """``name``'s span, current for the block; nothing at all (not even a no-op span) on
    the hot paths that use it while tracing is off."""
    if _provider is None:
        return contextlib.nullcontext()
    return TRACER.start_as_current_span(name, **options)


def add_trace_ids(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the current span's ids on every log line inside one."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event["trace_id"] = format(span_context.trace_id, "032x")
        event["span_id"] = format(span_context.span_id, "016x")
    return event


def context_metadata() -> dict[str, Any]:
    """The current trace context for an outbox event's metadata; empty when not traced."""
    if _provider is None or not trace.get_current_span().get_span_context().is_valid:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {METADATA_KEY: carrier} if carrier else {}


def event_context(metadata: Mapping[str, Any]) -> otel_context.Context | None:
    """The trace context a command left in its event's metadata, if any."""
    carrier = metadata.get(METADATA_KEY)
    if not isinstance(carrier, Mapping):
        return None
    extracted = propagate.extract({str(k): str(v) for k, v in carrier.items()})
    span_context = trace.get_current_span(extracted).get_span_context()
    return extracted if span_context.is_valid else None


def links_to(span_contexts: Iterable[trace.SpanContext]) -> list[Link]:
    return [Link(c) for c in span_contexts if c.is_valid]


def record_projections(
    events: Iterable[Any],
    timings: Mapping[str, tuple[int, int]],
    touched: Mapping[str, set[int]],
    batch: trace.Span,
) -> None:
    """For each traced event of a relay batch: a span in its trace over the batch, with a
    child per projection that applied it (their start and end as measured)."""
    timings = {name: timings[name] for name in touched if name in timings}
    if _provider is None or not timings:
        return
    start = min(begin for begin, _ in timings.values())
    end = max(finish for _, finish in timings.values())
    batch_link = links_to([batch.get_span_context()])
    for event in events:
        parent = event_context(event.metadata)
        if parent is None:
            continue
        span = TRACER.start_span(
            f"relay apply {event.type}",
            context=parent,
            kind=SpanKind.CONSUMER,
            start_time=start,
            links=batch_link,
            attributes={"cqrs_shop.event.position": event.position,
                        "cqrs_shop.event.type": event.type},
        )  # fmt: skip
        inside = trace.set_span_in_context(span)
        for name, (begin, finish) in timings.items():
            if event.position in touched[name]:
                TRACER.start_span(f"project {name}", context=inside, start_time=begin).end(
                    end_time=finish
                )
        span.end(end_time=end)
