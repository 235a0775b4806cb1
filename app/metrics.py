"""Prometheus metrics: projection progress, read from this process's view on each scrape."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from app import bus_metrics, guards, http
from app.bootstrap import Services
from projections.registry import projection_names
from projections.relay import BATCH_SECONDS, Relay
from schema import metrics as schema_metrics
from schema import sharing, subscriptions


class ProgressCollector(Collector):
    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
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
            if relay.running:  # a standby's view is frozen at its last tenure
                yield from _relay_metrics(relay)
        yield from _cache_metrics(self.services)
        yield from _subscription_metrics()


def _relay_metrics(relay: Relay) -> Iterator[GaugeMetricFamily]:
    """Per projection, as the relay holding the lease sees it: lag and failing flags."""
    lag_events = GaugeMetricFamily(
        "shop_projection_lag_events",
        "Outbox events a projection has not applied yet (exported by the relay holding the lease)",
        labels=["projection"],
    )
    lag_seconds = GaugeMetricFamily(
        "shop_projection_lag_seconds",
        "Age of the oldest outbox event a projection has not applied yet; 0 when caught up",
        labels=["projection"],
    )
    failing = GaugeMetricFamily(
        "shop_projection_failing",
        "1 while a projection's last attempt failed (it retries with back-off; "
        "lastError in the projections query)",
        labels=["projection"],
    )
    for name, position in relay.positions.items():
        lag_events.add_metric([name], max(relay.head - position, 0))
        lag_seconds.add_metric([name], relay.lag_seconds(name))
        failing.add_metric([name], 1.0 if name in relay.failing else 0.0)
    yield from (lag_events, lag_seconds, failing)


def _cache_metrics(services: Services) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """The read cache's size and use (projections.cache)."""
    cache = services.progress.cache
    if cache is None or not cache.enabled:
        return
    stats = cache.stats
    yield CounterMetricFamily(
        "shop_read_cache_hits", "Reads answered from this process's read cache", stats.hits
    )
    yield CounterMetricFamily(
        "shop_read_cache_misses", "Reads the read cache sent to the read store", stats.misses
    )
    yield CounterMetricFamily(
        "shop_read_cache_evictions", "Entries dropped to stay within its bytes", stats.evictions
    )
    yield CounterMetricFamily(
        "shop_read_cache_invalidations", "Changes that dropped entries", stats.invalidations
    )
    yield GaugeMetricFamily("shop_read_cache_bytes", "Bytes the read cache holds", cache.bytes)
    yield GaugeMetricFamily("shop_read_cache_max_bytes", "Its bound", cache.max_bytes)
    yield GaugeMetricFamily("shop_read_cache_entries", "Entries it holds", len(cache))


def _subscription_metrics() -> Iterator[CounterMetricFamily]:
    yield CounterMetricFamily(
        "shop_subscription_events_executed",
        "Subscription events whose selection set was executed",
        sharing.STATS.executed,
    )
    yield CounterMetricFamily(
        "shop_subscription_events_shared",
        "Subscription events answered with another subscriber's execution",
        sharing.STATS.shared,
    )


# Measured where they happen (prometheus_client instruments, process-wide).
INSTRUMENTS = (
    *bus_metrics.INSTRUMENTS, BATCH_SECONDS, *schema_metrics.INSTRUMENTS,
    subscriptions.OPEN_SUBSCRIPTIONS, guards.OPEN_SOCKETS, http.REFUSED,
)  # fmt: skip


def registry_for(services: Services) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(ProgressCollector(services))
    for instrument in INSTRUMENTS:
        registry.register(instrument)
    return registry


async def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.state.metrics
    return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")
