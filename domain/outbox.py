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
# The channel a commit notifies (projections.signals listens to it).
OUTBOX_CHANNEL = "shop_outbox"
_INSERT = outbox.insert().returning(outbox.c.event_id, outbox.c.position)


def rows(
    events: Sequence[Event], *, now: datetime, metadata: dict[str, Any]
) -> list[dict[str, Any]]:
    """The outbox rows of ``events``, each with a new event id, for :func:`insert`."""
    return [
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


async def lock(conn: AsyncConnection) -> int | None:
    """Takes the outbox lock until the end of the transaction; the transaction's id.

    On PostgreSQL a sequence hands out positions at insert time, so two writers can
    commit them out of order and a relay reading ``position > checkpoint`` would skip
    the late one. A transaction-scoped advisory lock, taken just before the insert and
    held until commit, makes positions follow commit order. Take it only once the
    transaction will wait for no row any more (see ``UnitOfWork.append_events``):
    a transaction holding it while it waits for a row that another one holds, which
    in turn waits for this lock, is a deadlock.

    The transaction id comes in the same round trip, to find out after a failed
    COMMIT whether it took effect (``txid_status``), and so does a ``NOTIFY`` that
    PostgreSQL delivers at commit (never before, nor if it rolls back), waking relays
    in other processes (``projections.signals``). SQLite already serialises writers
    (``BEGIN IMMEDIATE``): no lock, no id.
    """
    if conn.dialect.name != "postgresql":
        return None
    stmt = sa.select(
        sa.func.pg_advisory_xact_lock(OUTBOX_LOCK_KEY),
        sa.func.txid_current(),
        sa.func.pg_notify(OUTBOX_CHANNEL, ""),
    )
    return int((await conn.execute(stmt)).one()[1])


async def insert(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Inserts :func:`rows` (under :func:`lock`) in one statement; their positions, in order."""
    if not rows:
        return []
    # Matched by event id rather than sort_by_parameter_order, which SQLAlchemy can only
    # honour on SQLite by sending one row per statement.
    result = await conn.execute(_INSERT, list(rows))
    positions = {event_id: int(position) for event_id, position in result.all()}
    return [positions[row["event_id"]] for row in rows]


async def append(
    conn: AsyncConnection, events: Sequence[Event], *, now: datetime, metadata: dict[str, Any]
) -> list[int]:
    """Appends ``events`` under the outbox lock and returns their positions, in order."""
    if not events:
        return []
    await lock(conn)
    return await insert(conn, rows(events, now=now, metadata=metadata))


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
