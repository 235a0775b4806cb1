"""Appending events to the outbox and reading them back in commit order."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.events import Event, RecordedEvent
from domain.model import outbox

# Any constant works; it only has to be the same in every process.
OUTBOX_LOCK_KEY = 0x5E0B0C


async def append(
    conn: AsyncConnection, events: Sequence[Event], *, now: datetime, metadata: dict[str, Any]
) -> list[int]:
    """Appends ``events`` and returns their positions, in order.

    On PostgreSQL a sequence hands out positions at insert time, so two writers can
    commit them out of order and a relay reading ``position > checkpoint`` would skip
    the late one. A transaction-scoped advisory lock, taken just before the insert and
    held until commit, makes positions follow commit order. SQLite already serialises
    writers (``BEGIN IMMEDIATE``).
    """
    if not events:
        return []
    if conn.dialect.name == "postgresql":
        await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(OUTBOX_LOCK_KEY)))
    rows = [
        {
            "event_id": str(uuid.uuid4()),
            "type": e.type,
            "aggregate_type": e.aggregate_type,
            "aggregate_id": e.aggregate_id,
            "aggregate_version": e.aggregate_version,
            "data": e.data,
            "metadata": metadata,
            "occurred_at": now,
        }
        for e in events
    ]
    stmt = outbox.insert().returning(outbox.c.position, sort_by_parameter_order=True)
    result = await conn.execute(stmt, rows)
    return [int(position) for position in result.scalars()]


async def head(conn: AsyncConnection) -> int:
    """The last position written, 0 for an empty outbox."""
    value = await conn.scalar(sa.select(sa.func.coalesce(sa.func.max(outbox.c.position), 0)))
    return int(value or 0)


async def read_after(conn: AsyncConnection, position: int, limit: int) -> list[RecordedEvent]:
    """Up to ``limit`` events after ``position``, oldest first."""
    stmt = (
        sa.select(outbox)
        .where(outbox.c.position > position)
        .order_by(outbox.c.position)
        .limit(limit)
    )
    rows = (await conn.execute(stmt)).mappings()
    return [
        RecordedEvent(
            position=int(r["position"]),
            event_id=r["event_id"],
            type=r["type"],
            aggregate_type=r["aggregate_type"],
            aggregate_id=r["aggregate_id"],
            aggregate_version=r["aggregate_version"],
            data=r["data"],
            occurred_at=r["occurred_at"],
            metadata=r["metadata"],
        )
        for r in rows
    ]
