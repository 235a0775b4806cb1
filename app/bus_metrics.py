"""The command bus's Prometheus instruments: ``domain.bus`` reports what happens
(:class:`~domain.bus.BusObserver`), this module measures it."""

from __future__ import annotations

from prometheus_client import Histogram

from schema.metrics import LATENCY_BUCKETS

COMMAND_SECONDS = Histogram(
    "shop_command_duration_seconds",
    "Time from a command's arrival at the bus to its answer, by command and outcome "
    "(accepted, rejected: a DomainError, failed, cancelled)",
    ["command", "outcome"],
    buckets=LATENCY_BUCKETS,
    registry=None,
)
GROUP_SIZE = Histogram(
    "shop_command_group_size",
    "Commands written together in one transaction (group commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=None,
)
INSTRUMENTS = (COMMAND_SECONDS, GROUP_SIZE)


class BusMetrics:
    """A :class:`~domain.bus.BusObserver` that feeds the process-wide instruments."""

    def answered(self, command: str, outcome: str, seconds: float) -> None:
        COMMAND_SECONDS.labels(command, outcome).observe(seconds)

    def grouped(self, size: int) -> None:
        GROUP_SIZE.observe(size)


BUS_METRICS = BusMetrics()
