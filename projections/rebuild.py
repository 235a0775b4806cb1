"""Rebuilding projections from position 0 into fresh collections, then swapping them in.

1. The named projections are marked REBUILDING and replayed from the whole outbox
   into ``<collection>__rebuild`` collections, while the live ones keep serving.
2. The rebuild asks the running relay for its lease (a handover) and, holding it,
   catches up to the head, so no live write can interleave with the swap.
3. Each fresh collection replaces its live one and the checkpoints are set to the
   rebuilt position; the lease is released and the live relay carries on from there.

With MongoDB the swap is one ``renameCollection`` with ``dropTarget`` per collection.
FerretDB 1.24 lacks ``dropTarget``, so there it drops and renames: for a few
milliseconds readers of that collection see it empty.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure
from sqlalchemy.ext.asyncio import AsyncEngine

from domain import outbox
from projections import checkpoints
from projections.lease import Lease
from projections.progress import Progress
from projections.projection import Projection
from projections.relay import Relay

log = logging.getLogger(__name__)

SUFFIX = "__rebuild"
HANDOVER_TIMEOUT = 60.0

Db = AsyncDatabase[dict[str, Any]]
Report = Callable[[int, int], None]


def collections_of(projection: Projection) -> list[str]:
    seeds: dict[str, Any] = getattr(projection, "seed_documents", {})
    return sorted(set(projection.indexes) | set(seeds))


@dataclass(frozen=True, slots=True)
class RebuildResult:
    projections: list[str]
    position: int
    events: int


async def rebuild(
    engine: AsyncEngine,
    db: Db,
    projections: Sequence[Projection],
    *,
    report: Report = lambda done, total: None,
    batch_size: int = 1000,
    write_chunk: int = 1000,
    prepared: Callable[[], Awaitable[object]] | None = None,
    check_versions: bool = False,
    concurrent_writes: int | None = None,
) -> RebuildResult:
    """Rebuilds ``projections`` and swaps them in; ``report(applied, head)`` shows progress.

    ``prepared()`` is awaited once the fresh collections exist (the embedded store
    indexes them there).
    """
    names = [p.name for p in projections]
    await _set_rebuilding(db, names, True)
    try:
        for projection in projections:
            for collection in collections_of(projection):
                await db.drop_collection(collection + SUFFIX)
            await db[checkpoints.COLLECTION].delete_one({"_id": projection.name + SUFFIX})
        relay = Relay(
            engine, db, projections, Progress(),
            batch_size=batch_size, write_chunk=write_chunk, suffix=SUFFIX,
            check_versions=check_versions, concurrent_writes=concurrent_writes,
        )  # fmt: skip
        await relay.setup()
        if prepared is not None:
            await prepared()
        applied = await _catch_up(engine, relay, report, 0)

        lease = Lease(db)
        await lease.request_handover()
        try:
            await _take(lease)
            applied = await _catch_up(engine, relay, report, applied)
            position = min(relay.positions.values())
            for projection in projections:
                await _swap(db, projection)
                await db[checkpoints.COLLECTION].update_one(
                    {"_id": projection.name},
                    {"$set": {"position": position, "head": relay.head,
                              "updatedAt": datetime.now(UTC), "lastError": None}},
                    upsert=True,
                )  # fmt: skip
                await db[checkpoints.COLLECTION].delete_one({"_id": projection.name + SUFFIX})
        finally:
            await lease.release()
    finally:
        await _set_rebuilding(db, names, False)
    return RebuildResult(names, position, applied)


async def _catch_up(engine: AsyncEngine, relay: Relay, report: Report, applied: int) -> int:
    while True:
        async with engine.connect() as conn:
            head = await outbox.head(conn)
        report(min(relay.positions.values()), head)
        count = await relay.run_once()
        applied += count
        if count < relay.batch_size:
            report(min(relay.positions.values()), max(head, relay.head))
            return applied


async def _take(lease: Lease) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANDOVER_TIMEOUT
    while not await lease.acquire():
        if loop.time() > deadline:
            raise TimeoutError("the running relay did not hand over its lease")
        await asyncio.sleep(0.05)


async def _swap(db: Db, projection: Projection) -> None:
    for collection in collections_of(projection):
        fresh = db[collection + SUFFIX]
        try:
            await fresh.rename(collection, dropTarget=True)
        except OperationFailure:
            await db.drop_collection(collection)
            await fresh.rename(collection)
    log.info("swapped in the rebuilt %s projection", projection.name)


async def _set_rebuilding(db: Db, names: list[str], rebuilding: bool) -> None:
    for name in names:
        await db[checkpoints.COLLECTION].update_one(
            {"_id": name}, {"$set": {"rebuilding": rebuilding}}, upsert=True
        )
