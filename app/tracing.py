"""Installs OpenTelemetry's SDK when ``SHOP_OTLP_ENDPOINT`` is set (see ``domain.tracing``
for what is traced)."""

from __future__ import annotations

from opentelemetry import trace

from domain import tracing


def configure(endpoint: str | None, service_name: str, role: str) -> bool:
    """Whether spans are recorded: installs, once per process, an SDK tracer provider
    exporting OTLP/HTTP to ``endpoint`` (its ``/v1/traces``); nothing without one. The SDK
    also reads the standard ``OTEL_*`` variables (sampler, batch delays, headers)."""
    if not endpoint:
        return False
    if tracing.enabled():
        return True
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": service_name, "cqrs_shop.role": role})
    provider = TracerProvider(resource=resource)
    exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    tracing.enable(provider)
    return True
