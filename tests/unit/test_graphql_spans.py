"""Strawberry's GraphQL spans are ended (and exported) also when the operation is refused."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.types.graphql import OperationType

from domain.identity import ANONYMOUS
from schema.build import build_schema
from schema.tracing import GraphQLSpans


class Context:
    principal = ANONYMOUS


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    original = GraphQLSpans.__init__

    def with_provider(self: GraphQLSpans, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **{**kwargs, "tracer_provider": provider})

    monkeypatch.setattr(GraphQLSpans, "__init__", with_provider)
    return exporter


async def test_a_refused_operation_still_ends_its_spans(exported: InMemorySpanExporter) -> None:
    schema = build_schema(traced=True)
    await schema.execute("{ __typename }", context_value=Context())
    assert sorted(s.name for s in exported.get_finished_spans()) == [
        "GraphQL Parsing", "GraphQL Query", "GraphQL Validation"
    ]  # fmt: skip
    exported.clear()
    with pytest.raises(InvalidOperationTypeError):
        await schema.execute(
            "mutation { __typename }", context_value=Context(),
            allowed_operation_types={OperationType.QUERY},
        )  # fmt: skip
    [operation] = [s for s in exported.get_finished_spans() if s.name == "GraphQL Query"]
    assert operation.events[0].name == "exception"
