"""Prometheus metrics: projection progress, read from this process's view on each scrape."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from app.bootstrap import Services
from projections.registry import projection_names


class ProgressCollector(Collector):
    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[GaugeMetricFamily]:
        checkpoint = GaugeMetricFamily(
            "shop_projection_checkpoint", "Last outbox position applied", labels=["projection"]
        )
        relay = self.services.relay
        # This process's view: its relay's, or what it learned from the relay's feed.
        for name in projection_names():
            checkpoint.add_metric([name], self.services.progress.position(name))
        yield checkpoint
        if relay is not None:
            yield GaugeMetricFamily("shop_outbox_head", "Last outbox position seen", relay.head)
            yield GaugeMetricFamily(
                "shop_relay_running", "1 while holding the lease", relay.running
            )
            failing = GaugeMetricFamily(
                "shop_projection_failing",
                "1 while a projection's last attempt failed (it retries with back-off; "
                "lastError in the projections query)",
                labels=["projection"],
            )
            for name in relay.positions:
                failing.add_metric([name], 1.0 if name in relay.failing else 0.0)
            yield failing


def registry_for(services: Services) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(ProgressCollector(services))
    return registry


async def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.state.metrics
    return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")
