"""Clearing a projection's recorded error: never for one still stuck, and never at the
cost of the progress feed."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from pymongo.errors import AutoReconnect

from domain.bus import CommandBus
from domain.commands import CreateProduct, RestockProduct
from domain.events import RecordedEvent
from projections import checkpoints
from projections.audit import AuditTrailProjection
from projections.products import ProductsProjection
from projections.progress import Progress
from projections.projection import Write
from projections.relay import ProjectionsFailed, Relay
from projections.signals import ProgressFeed


class FailsAt(ProductsProjection):
    def __init__(self, at: int) -> None:
        self.at = at

    def project(self, event: RecordedEvent) -> list[Write]:
        if event.position == self.at:
            raise ValueError(f"cannot project {event.position}")
        return super().project(event)


class AuditFailsAt(AuditTrailProjection):
    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def project(self, event: RecordedEvent) -> list[Write]:
        if event.position == self.at:
            raise ValueError(f"audit cannot project {event.position}")
        return super().project(event)


async def create(bus: CommandBus, sku: str) -> Any:
    return await bus.execute(
        CreateProduct(sku=sku, name="n", category="c", price_cents=1, initial_stock=0)
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_projection_stuck_past_the_batch_keeps_its_error(
    bus: CommandBus, engine: Any, db: Any
) -> None:
    """Products is stuck on event 5; the audit trail, far behind, makes batches (of 2)
    that end before it: products is no better for that."""
    for n in range(6):
        await create(bus, f"S{n}")
    products, audit = FailsAt(5), AuditFailsAt(2)
    relay = Relay(engine, db, [products, audit], Progress(), write_chunk=32, batch_size=2)
    await relay.setup()
    for _ in range(6):
        with contextlib.suppress(ProjectionsFailed):
            await relay.step()
        relay._retry_at.pop("products", None)  # products goes on, the audit backs off
    assert relay.positions == {"products": 4, "audit_trail": 1}
    assert (await checkpoints.load_all(db))["products"].last_error is not None
    audit.at = 0  # the audit trail's fault is mended
    relay._retry_at.clear()
    await relay.step()
    assert (await checkpoints.load_all(db))["products"].last_error is not None
    assert "products" in relay.failing


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_an_error_that_cannot_be_cleared_does_not_cost_the_feed_its_row(
    bus: CommandBus, engine: Any, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    feed = ProgressFeed(engine)
    relay = Relay(engine, db, [ProductsProjection()], Progress(), feed=feed, write_chunk=32)
    await relay.setup()
    made = await create(bus, "A")
    assert await relay.step() == 1
    await relay._record_errors({"products": OSError("the write store went away")})
    restocked = await bus.execute(RestockProduct(made.id, quantity=1))

    async def unreachable(*_: Any, **__: Any) -> None:
        raise AutoReconnect("blip")

    monkeypatch.setattr(checkpoints, "clear_error", unreachable)
    await relay.step()  # the clearing fails: the batch does not
    assert relay.positions["products"] == restocked.version
    published = [a.position for row in await feed.read_after(0) for a in row.advances]
    assert restocked.version in published
    monkeypatch.undo()
    await relay.step()  # cleared on a later turn
    assert (await checkpoints.load_all(db))["products"].last_error is None
