"""Rebuilding projections from position 0 into fresh collections, then switching to them.

1. One rebuild at a time: a rebuild holds the ``rebuild`` lease (renewed while it
   runs, so one that dies frees it within ``REBUILD_TTL``). One that finds the lease
   held tells a running rebuild (it renews the lease) from one that stopped answering
   (it does not), and may wait for either (:data:`Wait`). It writes a new generation
   of collections, ``<collection>__g<n>``, numbered above every generation that exists.
2. The named projections are marked REBUILDING and replayed from the whole outbox
   into the fresh collections, while the live ones keep serving.
3. The rebuild asks the running relay for its lease (a handover, which expires if
   the rebuild dies) and, in that tenure, fences the live checkpoints and catches up
   to the head, so no live write can interleave with the switch.
4. Each projection's checkpoint takes the rebuilt position and names the fresh
   collections in one update (see ``projections.readdb``): readers switch from a
   complete old collection to a complete new one, never through an empty one. The
   lease is released and the live relay carries on from there, in a new tenure.
5. After a grace period, by when every process has switched, the replaced
   collections are dropped. A rebuild that died leaves fresh collections nobody
   serves; the next rebuild drops them first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pymongo.asynchronous.database import AsyncDatabase
from sqlalchemy.ext.asyncio import AsyncEngine

from domain import outbox
from projections import checkpoints
from projections.lease import Lease, Tenure
from projections.progress import Progress
from projections.projection import Projection, collections_of
from projections.relay import Relay

log = logging.getLogger(__name__)

REBUILD_LEASE = "rebuild"
# A running rebuild renews its lease every third of this (_keep); one that last renewed
# it more than half of this ago has missed a renewal by far: it has stopped answering.
REBUILD_TTL = 10.0
# How often a rebuild waiting for the lease looks at it again.
WATCH_INTERVAL = 0.25
GENERATION = "__g"
HANDOVER_TIMEOUT = 60.0
# Longer than any process takes to learn of a switch (a ProgressFollower reads the
# checkpoints at least once a second).
GRACE = 10.0

Db = AsyncDatabase[dict[str, Any]]
Report = Callable[[int, int], None]
Say = Callable[[str], None]
# What a rebuild that finds the lease held waits for: "never" refuses at once;
# "stopped" waits out the lease of a rebuild that stopped answering and refuses if it
# sees the lease renewed; "always" waits for a running rebuild to finish as well.
Wait = Literal["never", "stopped", "always"]


class RebuildRunning(RuntimeError):
    """Another rebuild holds the rebuild lease: ``holder`` (the lease's owner) until
    ``expires_at`` (UTC, by the write store's clock; ``seconds_left`` from when it was
    read) unless it renews it. ``answering``: it renewed the lease ``renewed_ago``
    seconds ago, as a running rebuild does; else it has stopped (killed, say) and the
    lease lapses at ``expires_at``."""

    def __init__(self, tenure: Tenure, ttl: float, *, lost: bool = False) -> None:
        self.holder = tenure.owner
        self.expires_at = tenure.expires
        self.seconds_left = tenure.left
        # Every rebuild lease has the same ttl, so its expiry dates its last renewal.
        self.renewed_ago = max(ttl - tenure.left, 0.0)
        self.answering = tenure.held and self.renewed_ago <= ttl / 2
        lead = "the rebuild lease was lost: " if lost else ""
        super().__init__(lead + self._situation())

    def _situation(self) -> str:
        if self.holder is None:
            return "nobody holds it now"
        expiry = f"{self.expires_at:%Y-%m-%d %H:%M:%S} UTC, {self.seconds_left:.1f} s from now"
        if self.answering:
            return (
                f"another rebuild is running (holder {self.holder} renewed its lease "
                f"{self.renewed_ago:.1f} s ago; the lease expires at {expiry}, unless renewed)"
            )
        return (
            f"a rebuild that stopped answering holds the lease (holder {self.holder}, last "
            f"renewed {self.renewed_ago:.1f} s ago); the lease expires at {expiry}"
        )


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
    grace: float = GRACE,
    say: Say = log.info,
    started: Callable[[], None] | None = None,
    wait: Wait = "never",
) -> RebuildResult:
    """Rebuilds ``projections`` and switches to them; ``report(applied, head)`` shows progress.

    ``prepared()`` is awaited once the fresh collections exist (the embedded store
    indexes them there); ``say`` tells what it waits for. Raises :class:`RebuildRunning`
    if another rebuild holds the lease, unless ``wait`` waits for it. ``started()`` is
    called once it holds the rebuild lease and the projections show as REBUILDING.
    """
    async with _rebuild_lease(engine, db, wait, say) as rebuild_lease:
        generation = await _new_generation(db, rebuild_lease)
        relay = Relay(
            engine, db, projections, Progress(),
            batch_size=batch_size, write_chunk=write_chunk, suffix=f"{GENERATION}{generation}",
            check_versions=check_versions, concurrent_writes=concurrent_writes,
        )  # fmt: skip
        result, replaced = await _rebuild(
            engine, db, relay, report, prepared, rebuild_lease, started
        )
        if replaced:
            say(f"switched; dropping the replaced collections in {grace:.0f} s")
            await asyncio.sleep(grace)  # readers in other processes switch meanwhile
            for collection in replaced:
                await db.drop_collection(collection)
    return result


async def _rebuild(
    engine: AsyncEngine,
    db: Db,
    relay: Relay,
    report: Report,
    prepared: Callable[[], Awaitable[object]] | None,
    rebuild_lease: Lease,
    started: Callable[[], None] | None = None,
) -> tuple[RebuildResult, list[str]]:
    projections = relay.projections
    names = [p.name for p in projections]
    await _still_holding(rebuild_lease)
    await checkpoints.set_rebuilding(db, names, True)
    try:
        if started is not None:
            started()
        await _drop_unserved(db, projections)
        for name in relay.checkpoint_names:
            await db[checkpoints.COLLECTION].delete_one({"_id": name})
        await relay.setup()
        if prepared is not None:
            await prepared()
        applied = await _catch_up(engine, relay, report, 0)

        lease = relay.lease
        await _take(lease)
        try:
            assert lease.epoch is not None
            await relay.begin_tenure(lease.epoch, reload=False)
            await checkpoints.fence(db, names, lease.epoch)
            applied = await _catch_up(engine, relay, report, applied)
            position = min(relay.positions.values())
            served = await checkpoints.load_all(db)
            replaced = []
            for projection in projections:
                await _still_holding(rebuild_lease)
                fresh = {c: c + relay.suffix for c in collections_of(projection)}
                old = served[projection.name].collections
                async with relay.write_gate:  # a write of the relay's tenure like any other
                    await checkpoints.switch(
                        db, projection.name, position, relay.head, fresh, lease.epoch
                    )
                await db[checkpoints.COLLECTION].delete_one({"_id": projection.name + relay.suffix})
                replaced += [old.get(c, c) for c in fresh if old.get(c, c) != fresh[c]]
                log.info("switched to the rebuilt %s projection", projection.name)
        finally:
            if relay.write_gate.unsettled:
                log.warning("a bulk write may still land; leaving the relay lease to expire")
            else:
                await lease.release()
    finally:
        await checkpoints.set_rebuilding(db, names, False)
    return RebuildResult(names, position, applied), replaced


@contextlib.asynccontextmanager
async def _rebuild_lease(engine: AsyncEngine, db: Db, wait: Wait, say: Say) -> AsyncIterator[Lease]:
    """Holds the rebuild lease (kept renewed) for the block."""
    lease = Lease(engine, db, name=REBUILD_LEASE, ttl=REBUILD_TTL)
    while not await lease.acquire():
        await _wait_for_lease(lease, wait, say)
    assert lease.epoch is not None
    try:
        async with asyncio.TaskGroup() as group:
            keeper = group.create_task(_keep(lease))
            try:
                yield lease
            finally:
                keeper.cancel()
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    finally:
        await lease.release()


async def rebuild_running(engine: AsyncEngine, db: Db) -> RebuildRunning | None:
    """Who holds the rebuild lease now, if anyone; for refusing without waiting."""
    tenure = await Lease(engine, db, name=REBUILD_LEASE, ttl=REBUILD_TTL).tenure()
    return RebuildRunning(tenure, REBUILD_TTL) if tenure.held else None


async def _wait_for_lease(lease: Lease, wait: Wait, say: Say) -> None:
    """Returns once nobody holds the rebuild lease (``acquire`` may then take it), or
    raises :class:`RebuildRunning` as ``wait`` says; says what it waits for, once per
    holder and verdict.

    A lease renewed lately may still be one whose rebuild died just after, so with
    ``wait="stopped"`` only a renewal seen while waiting proves its rebuild runs.
    """
    ttl = lease.ttl.total_seconds()
    tenure = await lease.tenure()
    renewed = False
    said: tuple[str | None, int, str] | None = None
    while tenure.held:
        running = RebuildRunning(tenure, ttl)
        if wait == "never" or (wait == "stopped" and renewed):
            raise running
        if not running.answering:
            verdict, message = "stopped", f"{running}; waiting for it to expire"
        elif wait == "always":
            verdict, message = "running", f"{running}; waiting for it to finish"
        else:
            verdict = "checking"
            message = (
                f"the rebuild lease is held (holder {running.holder}, renewed "
                f"{running.renewed_ago:.1f} s ago); checking whether its rebuild still runs"
            )
        if said != (tenure.owner, tenure.epoch, verdict):
            say(message)
            said = (tenure.owner, tenure.epoch, verdict)
        await asyncio.sleep(min(WATCH_INTERVAL, tenure.left))
        latest = await lease.tenure()
        same_tenure = (latest.owner, latest.epoch) == (tenure.owner, tenure.epoch)
        renewed = same_tenure and (renewed or latest.expires_at > tenure.expires_at)
        tenure = latest


async def _new_generation(db: Db, lease: Lease) -> int:
    """A generation number no collection has used: the rebuild lease's epoch, unless
    collections of that number or later exist already (a restored write store, say)."""
    assert lease.epoch is not None
    pattern = re.compile(re.escape(GENERATION) + r"([0-9]+)$")
    names = set(await db.list_collection_names())
    for checkpoint in (await checkpoints.load_all(db)).values():
        names.update(checkpoint.collections.values())
    used = [int(m.group(1)) for name in names if (m := pattern.search(name))]
    return max([lease.epoch, *(n + 1 for n in used)])


async def _keep(lease: Lease) -> None:
    while True:
        await asyncio.sleep(lease.ttl.total_seconds() / 3)
        await _still_holding(lease)


async def _still_holding(lease: Lease) -> None:
    """Renews the rebuild lease; raises if this rebuild lost it (it was paused past it,
    and another rebuild may be running)."""
    if not await lease.renew():
        raise RebuildRunning(await lease.tenure(), lease.ttl.total_seconds(), lost=True)


async def _drop_unserved(db: Db, projections: Sequence[Projection]) -> None:
    """Drops fresh collections of rebuilds that died, and replaced ones not yet dropped,
    and the checkpoints of generations that were never switched to."""
    await db[checkpoints.COLLECTION].delete_many({"_id": {"$regex": f"{GENERATION}[0-9]+$"}})
    stored = await checkpoints.load_all(db)
    existing = set(await db.list_collection_names())
    for projection in projections:
        served = stored[projection.name].collections if projection.name in stored else {}
        for collection in collections_of(projection):
            now = served.get(collection, collection)
            for name in existing:
                ours = name in (collection, collection + "__rebuild") or name.startswith(
                    collection + GENERATION
                )
                if ours and name != now:
                    await db.drop_collection(name)


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
    asked = -float("inf")
    while True:
        if loop.time() - asked > lease.ttl.total_seconds() / 3:
            await lease.request_handover()  # again and again: a request nobody renews expires
            asked = loop.time()
        if await lease.acquire():
            return
        if loop.time() > deadline:
            raise TimeoutError("the running relay did not hand over its lease")
        await asyncio.sleep(0.05)
