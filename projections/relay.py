"""The outbox relay: reads events in commit order and applies them to every projection.

Delivery is at least once: a batch is written to Mongo first and the checkpoint
moved after, so a crash in between replays the batch, and the projections'
version guards turn the replay into no-ops.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypedDict

from pymongo import IndexModel, InsertOne, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, PyMongoError
from sqlalchemy.ext.asyncio import AsyncEngine

from domain import outbox
from domain.events import RecordedEvent
from projections import checkpoints
from projections.lease import Lease
from projections.progress import Progress
from projections.projection import MongoWrite, Projection, Write, coalesce

log = logging.getLogger(__name__)

MAX_BACKOFF = 5.0
# A bulk write goes out only while the lease is ours for at least this long.
LEASE_MARGIN = 3.0
DUPLICATE_KEY = 11000


async def ensure_indexes(
    db: AsyncDatabase[dict[str, Any]], collection: str, indexes: Sequence[IndexModel]
) -> None:
    """Creates the missing indexes, one per command.

    FerretDB 1.24 drops the connection (a panic in its handler) when one
    ``createIndexes`` command names two or more indexes that exist already, which
    two processes starting together could otherwise provoke.
    """
    existing = await db[collection].index_information()
    for index in indexes:
        if index.document["name"] not in existing:
            await db[collection].create_indexes([index])


async def prepare_collections(
    db: AsyncDatabase[dict[str, Any]], projection: Projection, suffix: str = ""
) -> None:
    """Indexes, and the documents a projection expects to exist (``seed_documents``)."""
    for collection, indexes in projection.indexes.items():
        await ensure_indexes(db, collection + suffix, indexes)
    seeds: dict[str, list[dict[str, Any]]] = getattr(projection, "seed_documents", {})
    for collection, documents in seeds.items():
        for document in documents:
            fields = {k: v for k, v in document.items() if k != "_id"}
            await db[collection + suffix].update_one(
                {"_id": document["_id"]}, {"$setOnInsert": fields}, upsert=True
            )


async def _insert_new(collection: Any, inserts: list[MongoWrite]) -> None:
    """Inserts what is missing; documents that exist already (a replay) are left alone."""
    try:
        await collection.bulk_write(inserts, ordered=False)
    except BulkWriteError as error:
        others = [e for e in error.details["writeErrors"] if e["code"] != DUPLICATE_KEY]
        if others:
            raise


async def apply_writes(
    db: Any,
    writes: list[Write],
    chunk: int,
    suffix: str = "",
    *,
    check_versions: bool = False,
    known: VersionCache | None = None,
    gate: WriteGate | None = None,
) -> None:
    """Per collection, in order: runs of inserts unordered, updates ordered, in chunks.

    ``gate`` bounds the bulk writes in flight across concurrent callers (see Relay).

    ``check_versions``: decide the version guards here instead of in the filter
    (see :func:`_checked`), with ``known`` versions from earlier batches. ``db`` is a
    PyMongo async database (or, in the driver benchmark, Motor's).
    """
    known = known if known is not None else VersionCache()
    by_collection: dict[str, list[Write]] = {}
    for write in writes:
        by_collection.setdefault(write.collection + suffix, []).append(write)
    for name, collection_writes in by_collection.items():
        collection = db[name]
        for segment in _segments(collection_writes):
            if not check_versions:
                await _send(collection, [write.operation for write in segment], chunk, gate)
                continue
            operations, versions = await _checked(collection, segment, known.of(name))
            try:
                await _send(collection, operations, chunk, gate)
            except BaseException:
                known.forget(name)  # some of these writes may have landed, some not
                raise
            if segment[-1].key is None:
                known.forget(name)  # it may have changed any document's version
            else:
                known.remember(name, versions)


def _segments(writes: list[Write]) -> list[list[Write]]:
    """Cut after each write that may touch many documents: versions read before it are stale."""
    segments: list[list[Write]] = [[]]
    for write in writes:
        segments[-1].append(write)
        if write.key is None:
            segments.append([])
    return [segment for segment in segments if segment]


async def _send(
    collection: Any,
    operations: list[MongoWrite],
    chunk: int,
    gate: WriteGate | None = None,
) -> None:
    for inserts, run in itertools.groupby(operations, lambda op: isinstance(op, InsertOne)):
        batch = list(run)
        for start in range(0, len(batch), chunk):
            part = batch[start : start + chunk]
            async with gate or contextlib.nullcontext():
                if inserts:
                    await _insert_new(collection, part)
                else:
                    await collection.bulk_write(part, ordered=True)


class RelayOptions(TypedDict):
    """How a relay writes to one kind of read store (``app.bootstrap.ReadStore``)."""

    write_chunk: int
    check_versions: bool
    concurrent_writes: int | None


_MISSING = object()
VERSION_READS = 16


class LeaseLost(RuntimeError):
    """The relay could not renew its lease in the middle of a batch; it stops writing."""


class WriteGate:
    """What every bulk write of a running relay passes: a bound on writes in flight,
    and the lease (renewed when less than ``margin`` seconds are left for sure)."""

    def __init__(
        self, lease: Lease, limit: int | None, margin: float, checking: Callable[[], bool]
    ) -> None:
        self.lease = lease
        self.margin = margin
        # Whether the relay runs under its lease now (not, say, in a rebuild's catch-up).
        self.checking = checking
        self._slots = asyncio.Semaphore(limit) if limit else None

    async def __aenter__(self) -> None:
        if self._slots is not None:
            await self._slots.acquire()
        try:
            renew = self.checking() and self.lease.held_for() < self.margin
            if renew and not await self.lease.acquire():
                raise LeaseLost("another relay holds the lease now")
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise

    async def __aexit__(self, *_: object) -> None:
        if self._slots is not None:
            self._slots.release()


class VersionCache:
    """The versions of documents this relay wrote itself, per collection (the newest
    ``size`` per collection: a few MB each).

    Valid only while the relay is the one writer: it is cleared when the lease is
    (re)taken, after a failed write, and for a collection after an update of many
    documents.
    """

    def __init__(self, size: int = 20_000) -> None:
        self.size = size
        self._versions: dict[str, dict[Any, Any]] = {}

    def of(self, collection: str) -> dict[Any, Any]:
        return self._versions.get(collection, {})

    def remember(self, collection: str, versions: dict[Any, Any]) -> None:
        cached = self._versions.setdefault(collection, {})
        for key, version in versions.items():
            cached.pop(key, None)  # re-inserted at the end: the newest are kept
            if version is not _MISSING:
                cached[key] = version
        while len(cached) > self.size:
            del cached[next(iter(cached))]

    def forget(self, collection: str) -> None:
        self._versions.pop(collection, None)

    def clear(self) -> None:
        self._versions.clear()


async def _checked(
    collection: Any, writes: list[Write], known: dict[Any, Any]
) -> tuple[list[MongoWrite], dict[Any, Any]]:
    """The writes with their version guards decided here: ``_id``-only filters.

    FerretDB 1.24 cannot look a document up by ``_id`` and ``version`` together: it
    decodes the whole collection for every such update (68 ms at 5,000 documents),
    while an update by ``_id`` alone is 0.6 ms. So the relay reads the versions of
    the documents a segment guards (by ``_id``, concurrently), applies the guard
    itself, and follows its own writes to the end of the segment. Equivalent to
    the filter as long as no one else writes these documents meanwhile, which the
    relay lease ensures. Versions in ``known`` (left by this relay's earlier
    batches) are not read again. Returns the writes to send and the versions they
    leave behind.
    """
    keys = {w.key for w in writes if w.guard is not None and w.key not in known}
    gate = asyncio.Semaphore(VERSION_READS)

    async def version_of(key: Any) -> tuple[Any, Any]:
        async with gate:
            document = await collection.find_one({"_id": key}, {"version": 1})
        return key, _MISSING if document is None else document.get("version")

    versions = dict(await asyncio.gather(*(version_of(key) for key in keys)))
    versions.update({w.key: known[w.key] for w in writes if w.key in known})
    operations: list[MongoWrite] = []
    for write in writes:
        if write.document is not None:  # an insert: it creates the document if missing
            if versions.get(write.key) is _MISSING:
                versions[write.key] = write.document.get("version")
            operations.append(write.operation)
        elif write.guard is not None and write.update is not None:
            current = versions.get(write.key, _MISSING)
            if current is _MISSING or current is None or current >= write.guard:
                continue  # what the filter {version: {$lt: guard}} would not match
            operations.append(UpdateOne({"_id": write.key}, write.update))
            versions[write.key] = write.update["$set"]["version"]
        else:
            operations.append(write.operation)
    return operations, versions


class Relay:
    """Applies outbox events to projections; :meth:`wake` it when a command commits.

    ``write_chunk`` bounds the operations sent in one bulk write, and
    ``concurrent_writes`` the bulk writes in flight at once (projections are applied
    side by side). FerretDB 1.24 keeps one pooled SQLite connection per update of a
    command open until the command ends and deadlocks when its 100 are taken, so
    FerretDB gets chunks of 16, three at a time per relay: 48 connections at most,
    so a rebuild's relay fits beside the live one (the app detects FerretDB from
    ``buildInfo``, see ``app.bootstrap.connect_read_store``).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        db: AsyncDatabase[dict[str, Any]],
        projections: Sequence[Projection],
        progress: Progress,
        *,
        batch_size: int = 500,
        poll_interval: float = 0.5,
        write_chunk: int = 1000,
        lease: Lease | None = None,
        suffix: str = "",
        check_versions: bool = False,
        concurrent_writes: int | None = None,
    ) -> None:
        self.engine = engine
        self.db = db
        self.projections = list(projections)
        self.progress = progress
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.write_chunk = write_chunk
        # FerretDB: version guards decided by the relay (see _checked), not in the filter.
        self.check_versions = check_versions
        self.known = VersionCache()
        self.lease = lease or Lease(db)
        # A rebuild writes into "<collection><suffix>" under "<projection><suffix>" checkpoints.
        self.suffix = suffix
        self.positions: dict[str, int] = {}
        # Per projection: below this position a batch may have been cut half-way, so
        # updates are not merged there (see projection.coalesce).
        self.merged_until: dict[str, int] = {}
        self.head = 0
        self.running = False
        self.write_gate = WriteGate(
            self.lease, concurrent_writes, LEASE_MARGIN, checking=lambda: self.running
        )
        self._wake = asyncio.Event()

    def wake(self, position: int | None = None) -> None:
        """Asks the relay to look at the outbox now (called after each commit)."""
        if position is not None:
            self.head = max(self.head, position)
        self._wake.set()

    async def setup(self) -> None:
        """Creates the projections' indexes and loads their checkpoints."""
        for projection in self.projections:
            await prepare_collections(self.db, projection, self.suffix)
        await self.load_positions()

    async def load_positions(self) -> None:
        """Takes each projection's position from its stored checkpoint.

        Called whenever this relay (re)gains the lease: someone else may have written
        meanwhile, so the versions it remembered are dropped too.
        """
        self.known.clear()
        self.progress.recent_events.clear()
        stored = await checkpoints.load_all(self.db)
        for projection in self.projections:
            checkpoint = stored.get(projection.name + self.suffix)
            position = checkpoint.position if checkpoint else 0
            self.positions[projection.name] = position
            self.merged_until[projection.name] = checkpoint.merged_until if checkpoint else 0
            self.progress.advance(projection.name, position)

    async def run(self) -> None:
        """Runs until cancelled, applying events whenever it holds the lease."""
        if not self.positions:
            await self.setup()
        backoff = 0.1
        try:
            while True:
                self._wake.clear()
                try:
                    if not await self.lease.acquire():
                        self.running = False
                        await self._idle(
                            min(self.poll_interval, self.lease.ttl.total_seconds() / 3)
                        )
                        continue
                    if not self.running:
                        # Whoever held the lease meanwhile (a rebuild) may have moved them.
                        await self.load_positions()
                    self.running = True
                    applied = await self.run_once()
                    backoff = 0.1
                except LeaseLost:
                    # Another relay took over during the batch: stand by; if the lease
                    # comes back, positions and remembered versions are loaded afresh.
                    log.warning("relay lost its lease during a batch; standing by")
                    self.running = False
                    continue
                except Exception as error:
                    # Whatever broke this batch (a store error, an unparseable reply),
                    # the relay must live on: the batch is retried, and retries are no-ops
                    # for what was already applied.
                    log.exception("relay batch failed; retrying in %.1fs", backoff)
                    await self._record_error(error)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    continue
                if applied < self.batch_size:
                    await self._idle(min(self.poll_interval, self.lease.ttl.total_seconds() / 3))
        finally:
            self.running = False
            with contextlib.suppress(PyMongoError, asyncio.CancelledError):
                await asyncio.shield(self.lease.release())

    async def run_once(self) -> int:
        """Applies one batch of events to every projection behind; how many events it read."""
        start = min(self.positions.values(), default=0)
        async with self.engine.connect() as conn:
            events = await outbox.read_after(conn, start, self.batch_size)
            self.head = max(self.head, await outbox.head(conn))
        work = [
            (projection, behind)
            for projection in self.projections
            if (behind := [e for e in events if e.position > self.positions[projection.name]])
        ]
        # Projections own separate collections and checkpoints: apply them side by side,
        # so one batch costs the slowest projection's round trips, not their sum.
        try:
            async with asyncio.TaskGroup() as group:
                for projection, behind in work:
                    group.create_task(self.apply(projection, behind))
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from failed
        return len(events)

    async def apply(self, projection: Projection, events: list[RecordedEvent]) -> None:
        writes = [write for event in events for write in projection.project(event)]
        position = events[-1].position
        merged = coalesce(writes)
        if len(merged) < len(writes):
            # Some document takes several updates: cut half-way, this batch would leave
            # it holding some but not all, so no relay may merge below its end. Said
            # before writing, merged or not (a later relay may cut batches elsewhere).
            await checkpoints.announce_merged(self.db, projection.name + self.suffix, position)
            if events[0].position > self.merged_until.get(projection.name, 0):
                writes = merged
            self.merged_until[projection.name] = position
        await apply_writes(
            self.db, writes, self.write_chunk, self.suffix,
            check_versions=self.check_versions, known=self.known, gate=self.write_gate,
        )  # fmt: skip
        await self.save_checkpoint(projection.name, position)
        self.positions[projection.name] = position
        if getattr(projection, "keeps_recent", False) and not self.suffix:
            self.progress.recent_events.add(w.document for w in writes if w.document is not None)
        keys = None if any(w.key is None for w in writes) else {w.key for w in writes}
        self.progress.advance(projection.name, position, keys)

    async def save_checkpoint(self, name: str, position: int) -> None:
        await checkpoints.save(self.db, name + self.suffix, position, max(self.head, position))

    async def _idle(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _record_error(self, error: Exception) -> None:
        for projection in self.projections:
            with contextlib.suppress(PyMongoError):
                await checkpoints.record_error(self.db, projection.name + self.suffix, repr(error))
