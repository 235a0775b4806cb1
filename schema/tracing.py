"""Strawberry's OpenTelemetry spans, ended however a step ends.

Strawberry's extension ends its operation, parsing and validation spans after its
``yield``; a step that raises (a mutation over GET, a subscription sent over HTTP, no
query) never gets there, and the span is neither ended nor exported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator

from strawberry.extensions.base_extension import LifecycleStep
from strawberry.extensions.tracing import OpenTelemetryExtension


class GraphQLSpans(OpenTelemetryExtension):
    def on_operation(self) -> Generator[None, None, None]:
        yield from self._ended(super().on_operation(), LifecycleStep.OPERATION)

    def on_validate(self) -> Generator[None, None, None]:
        yield from self._ended(super().on_validate(), LifecycleStep.VALIDATION)

    def on_parse(self) -> Generator[None, None, None]:
        yield from self._ended(super().on_parse(), LifecycleStep.PARSE)

    def _ended(
        self, step: Generator[None, None, None], name: LifecycleStep
    ) -> Generator[None, None, None]:
        next(step)  # starts the span
        try:
            yield
        except BaseException as error:
            step.close()
            span = self._span_holder.get(name)
            if span is not None:
                if not isinstance(error, GeneratorExit | asyncio.CancelledError):
                    span.record_exception(error)
                span.end()
            raise
        next(step, None)  # ends it
