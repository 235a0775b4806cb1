"""Each projection's state, as the ``projections`` query and ``cqrs-shop status`` show it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from projections import checkpoints, lease
from projections.rebuild import REBUILD_LEASE
from projections.registry import all_projections


@dataclass(frozen=True, slots=True)
class ProjectionState:
    name: str
    position: int
    head: int
    lag: int
    state: str
    """RUNNING, CATCHING_UP, REBUILDING, STALLED or STOPPED."""
    last_error: str | None
    updated_at: datetime | None


async def projection_states(
    db: AsyncDatabase[dict[str, Any]], head: int | None = None
) -> list[ProjectionState]:
    """Every projection's state from the read store; ``head``: the outbox head if known
    (else the highest head the relay recorded in the checkpoints)."""
    stored = await checkpoints.load_all(db)
    relay_alive = await lease.holder_alive(db)
    # A rebuild that died leaves its flags behind; its lease tells whether it runs.
    rebuild_alive = await lease.holder_alive(db, REBUILD_LEASE)
    rebuilding = await checkpoints.rebuilding(db) if rebuild_alive else set()
    if head is None:
        head = max((c.head for c in stored.values()), default=0)
    states = []
    for projection in all_projections():
        checkpoint = stored.get(projection.name)
        position = checkpoint.position if checkpoint else 0
        lag = max(head - position, 0)
        last_error = checkpoint.last_error if checkpoint else None
        if projection.name in rebuilding:
            state = "REBUILDING"
        elif not relay_alive:
            state = "STOPPED"
        elif last_error:
            state = "STALLED"
        else:
            state = "CATCHING_UP" if lag else "RUNNING"
        states.append(
            ProjectionState(
                projection.name,
                position,
                max(head, position),
                lag,
                state,
                last_error,
                checkpoint.updated_at if checkpoint else None,
            )
        )
    return states
