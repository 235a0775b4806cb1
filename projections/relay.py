"""The outbox relay: reads events in commit order and applies them to every projection.

Delivery is at least once: a batch is announced, written to Mongo, and only then
is the checkpoint moved, so a crash in between replays the batch, and the
projections' version guards turn the replay into no-ops.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypedDict, TypeVar

from prometheus_client import Histogram
from pymongo import IndexModel, InsertOne, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    BulkWriteError,
    CollectionInvalid,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from domain import outbox, tracing
from domain.events import RecordedEvent
from projections import checkpoints, readdb
from projections.lease import Lease
from projections.progress import Progress, wait_set
from projections.projection import MongoWrite, Projection, Write, coalesce, collections_of
from projections.signals import Advance, ProgressFeed

log = logging.getLogger(__name__)

MAX_BACKOFF = 5.0
# A bulk write goes out only while the lease is ours for at least this long (or half the
# lease's ttl, if that is shorter).
LEASE_MARGIN = 3.0
DUPLICATE_KEY = 11000
T = TypeVar("T")
BATCH_SECONDS = Histogram(
    "shop_relay_batch_duration_seconds",
    "Time the relay took to apply one batch of outbox events to the projections",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=None,
)


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
    """Its collections (created now, even those without an index of their own: the
    embedded store indexes ``_id`` lookups only of collections that exist, see
    ``app.ferretdb.index_document_ids``), indexes, and the documents a projection
    expects to exist (``seed_documents``)."""
    existing = set(await db.list_collection_names())
    for collection in collections_of(projection):
        if collection + suffix not in existing:
            try:
                await db.create_collection(collection + suffix)
            except CollectionInvalid:
                pass  # another process was first
            except OperationFailure as error:
                if error.code != NAMESPACE_EXISTS:  # the same, as the server says it
                    raise
    for collection, indexes in projection.indexes.items():
        await ensure_indexes(db, collection + suffix, indexes)
    seeds: dict[str, list[dict[str, Any]]] = getattr(projection, "seed_documents", {})
    for collection, documents in seeds.items():
        for document in documents:
            fields = {k: v for k, v in document.items() if k != "_id"}
            # Another process starting beside this one may create it first.
            with contextlib.suppress(DuplicateKeyError):
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
                try:
                    if inserts:
                        await _insert_new(collection, part)
                    else:
                        await collection.bulk_write(part, ordered=True)
                except asyncio.CancelledError:
                    if gate is not None:
                        gate.unsettled = True
                    raise


async def _timed(timings: dict[str, tuple[int, int]], name: str, work: Awaitable[T]) -> T:
    """``work``'s result; its start and end (ns since the epoch) in ``timings[name]``."""
    began = time.time_ns()
    try:
        return await work
    finally:
        timings[name] = (began, time.time_ns())


class RelayOptions(TypedDict):
    """How a relay writes to one kind of read store (``app.bootstrap.ReadStore``)."""

    write_chunk: int
    check_versions: bool
    concurrent_writes: int | None


_MISSING = object()
NAMESPACE_EXISTS = 48
VERSION_READS = 16


class LeaseLost(RuntimeError):
    """The relay's tenure ended (its lease was taken, or a newer epoch fenced its
    checkpoints) in the middle of a batch; it stops writing."""


class ProjectionsFailed(Exception):
    """Some projections' part of a batch failed; each retries on its own (the others'
    writes and checkpoints stand). ``failures``: the error of each, by name."""

    def __init__(self, failures: dict[str, BaseException]) -> None:
        super().__init__("; ".join(f"{name}: {error!r}" for name, error in failures.items()))
        self.failures = failures


class WriteGate:
    """What every bulk write of a relay passes: a bound on writes in flight, and, for a
    relay in a tenure (``tenure()`` is its epoch, None outside one), the lease:
    renewed when less than ``margin`` seconds are left for sure, or the write is refused.
    """

    def __init__(
        self, lease: Lease, limit: int | None, margin: float, tenure: Callable[[], int | None]
    ) -> None:
        self.lease = lease
        self.margin = margin
        self.tenure = tenure
        self.unsettled = False
        """Whether a bulk write was cancelled in flight (it may still land)."""
        self._slots = asyncio.Semaphore(limit) if limit else None

    async def __aenter__(self) -> None:
        if self._slots is not None:
            await self._slots.acquire()
        try:
            epoch = self.tenure()
            renew = epoch is not None and self.lease.held_for() < self.margin
            if renew and (
                not await self.lease.renew()
                or self.lease.epoch != epoch
                # the renewal itself took so long that little of the lease is left
                or self.lease.held_for() < min(self.margin, self.lease.ttl.total_seconds() / 2)
            ):
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
    kept: list[Write] = []
    for write in writes:
        if write.document is not None:  # an insert: it creates the document if missing
            if versions.get(write.key) is _MISSING:
                versions[write.key] = write.document.get("version")
            kept.append(write)
        elif write.guard is not None and write.update is not None:
            current = versions.get(write.key, _MISSING)
            if current is _MISSING or current is None or current >= write.guard:
                continue  # what the filter {version: {$lt: guard}} would not match
            kept.append(write)
            versions[write.key] = write.update["$set"]["version"]
        else:
            kept.append(write)
    # Every update kept applies for certain (its document is below its guard, and the
    # relay is the only writer), so a document's updates merge whatever an earlier,
    # interrupted attempt left behind: a retry costs what a first attempt does.
    operations = [
        UpdateOne({"_id": w.key}, w.update)
        if w.guard is not None and w.update is not None
        else w.operation
        for w in coalesce(kept)
    ]
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

    **Tenures.** :meth:`run` applies events only while it holds the lease. Each new
    tenure (a new lease epoch) fences every checkpoint with its epoch and reloads
    what the relay remembers (positions, versions, announced batches), since others
    may have written meanwhile. Within a tenure, every bulk write first checks the
    lease (:class:`WriteGate`) and every checkpoint move is fenced by the epoch.

    **Batches.** Before a batch writes anything, the end of each projection's part is
    announced (``checkpoints.announce``); a projection's updates are merged
    (``projection.coalesce``) only when its part starts above every end announced
    before, that is where no earlier attempt, this relay's or a dead one's, can have
    left a document holding some of the part's events but not all. Each projection's
    part is written and checkpointed on its own: one that fails retries after its
    own back-off and never undoes or holds up the others.
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
        feed: ProgressFeed | None = None,
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
        self.lease = lease or Lease(engine, db)
        # A rebuild writes into "<collection><suffix>" under "<projection><suffix>" checkpoints.
        self.suffix = suffix
        self.positions: dict[str, int] = {}
        # Per projection: the end of the newest batch any relay may have started writing.
        self.attempted: dict[str, int] = {}
        self.epoch: int | None = None
        """The tenure this relay writes in: its checkpoint moves are fenced by it and its
        bulk writes check the lease. None: outside any (a rebuild's first pass, tests)."""
        self.head = 0
        self.running = False
        """Whether :meth:`run` holds the lease now."""
        self.write_gate = WriteGate(
            self.lease,
            concurrent_writes,
            min(LEASE_MARGIN, self.lease.ttl.total_seconds() / 2),
            tenure=lambda: self.epoch,
        )
        self._retry_at: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self.behind_since: dict[str, datetime | None] = {}
        """Per projection behind the head: when its oldest unapplied event happened."""
        self._batch: list[RecordedEvent] = []
        self._start: int | None = None
        self._errors_recorded: set[str] = set()
        """Projections whose checkpoint this relay gave a lastError (see _clear_errors)."""
        self.failing: dict[str, str] = {}
        """The last error of each projection whose last attempt failed (for metrics)."""
        self._wake = asyncio.Event()
        self._retry_now = asyncio.Event()
        # Where it tells other processes of its progress (projections.signals); a
        # rebuild's relay has none: nobody reads its collections before the swap.
        self.feed = feed

    def wake(self, position: int | None = None) -> None:
        """Asks the relay to look at the outbox now (called after each commit)."""
        if position is not None:
            self.head = max(self.head, position)
        self._wake.set()

    def retry_now(self) -> None:
        """Ends every back-off at once (called when a store that failed is back)."""
        self._retry_at.clear()
        self._backoff.clear()
        self._retry_now.set()

    @property
    def checkpoint_names(self) -> list[str]:
        return [projection.name + self.suffix for projection in self.projections]

    async def setup(self) -> None:
        """Loads the projections' checkpoints (which also name the collections serving
        them), then creates those collections' indexes."""
        await self.load_positions()
        for projection in self.projections:
            await prepare_collections(self.db, projection, self.suffix)

    async def begin_tenure(self, epoch: int, *, reload: bool = True) -> None:
        """Writes from now on in tenure ``epoch``: fences the checkpoints, then (``reload``)
        loads them afresh; raises :class:`LeaseLost` if a newer tenure got there first."""
        try:
            await checkpoints.fence(self.db, self.checkpoint_names, epoch)
        except checkpoints.Fenced as error:
            # Checkpoints fenced by an epoch the lease does not remember (the write
            # store restored from a backup, say): move the tenure past it, or yield.
            if self.lease.epoch != epoch or not await self.lease.raise_epoch(error.epoch):
                raise LeaseLost(str(error)) from error
            assert self.lease.epoch is not None
            epoch = self.lease.epoch
            log.warning("checkpoints carried epoch %d; this tenure is %d now", error.epoch, epoch)
            await checkpoints.fence(self.db, self.checkpoint_names, epoch)
        if reload:
            await self.load_positions()
        self.epoch = epoch

    async def load_positions(self) -> None:
        """Takes each projection's position from its stored checkpoint.

        Called whenever this relay starts a tenure: someone else may have written
        meanwhile, so the versions it remembered are dropped too.
        """
        self.known.clear()
        self.progress.recent_events.clear()
        self._retry_at.clear()
        self.behind_since.clear()
        stored = await checkpoints.load_all(self.db)
        readdb.switch(self.db, stored.values())  # before progress: see projections.readdb
        for projection in self.projections:
            checkpoint = stored.get(projection.name + self.suffix)
            position = checkpoint.position if checkpoint else 0
            self.positions[projection.name] = position
            self.attempted[projection.name] = checkpoint.attempted_until if checkpoint else 0
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
                    applied = await self.step()
                    backoff = 0.1
                    self._retry_now.clear()  # asked for while things went well: nothing to cut
                except LeaseLost:
                    # Another relay took over: stand by; a later tenure starts afresh.
                    log.warning("relay lost its lease; standing by")
                    self.running = False
                    continue
                except ProjectionsFailed:
                    # Logged and recorded per projection; each waits its own back-off.
                    continue
                except Exception as error:
                    # Whatever broke this batch (a store error, an unparseable reply),
                    # the relay must live on: the batch is retried, and retries are no-ops
                    # for what was already applied.
                    log.exception("relay batch failed; retrying in %.1fs", backoff)
                    if self.lease.held_for() <= 0:  # say, the lease could not be renewed
                        self.running = False
                    if self.running:  # a standby's errors are not the projections'
                        await self._record_errors({p.name: error for p in self.projections})
                        self.failing.update({p.name: repr(error) for p in self.projections})
                    await wait_set(self._retry_now, backoff)
                    if self._retry_now.is_set():  # set during the batch or the wait
                        self._retry_now.clear()
                        backoff = 0.1
                    else:
                        backoff = min(backoff * 2, MAX_BACKOFF)
                    continue
                if applied is None or applied < self.batch_size:
                    await self._idle(self._standby_interval)
        finally:
            self.running = False
            if self.write_gate.unsettled:
                # A bulk write was cut off by the cancellation and may still land: let
                # the lease run out rather than hand it to another relay at once.
                log.warning("a bulk write may still land; leaving the lease to expire")
            else:
                with contextlib.suppress(PyMongoError, SQLAlchemyError, asyncio.CancelledError):
                    await asyncio.shield(self.lease.release())

    async def step(self) -> int | None:
        """One turn of :meth:`run`: takes or renews the lease (starting a tenure if it is
        a new one) and applies one batch; how many events it read, None on standby."""
        if not await self.lease.acquire():
            self.running = False
            self._retry_at.clear()  # back-offs belong to a tenure
            return None
        if self.lease.epoch != self.epoch or not self.running:
            assert self.lease.epoch is not None
            await self.begin_tenure(self.lease.epoch)
        self.running = True
        return await self.run_once()

    @property
    def _standby_interval(self) -> float:
        # A standby looks 4 times per ttl: it takes over within 1.25 ttl of a death.
        interval = min(self.poll_interval, self.lease.ttl.total_seconds() / 4)
        if self._retry_at and self.running:
            soonest = min(self._retry_at.values()) - asyncio.get_running_loop().time()
            interval = min(interval, max(soonest, 0.0))
        return interval

    async def run_once(self) -> int:
        """Applies one batch of events to every projection behind; how many events it read.

        Raises :class:`ProjectionsFailed` after the others are done if some projections
        failed (they retry after their back-off), :class:`LeaseLost` if the tenure ended.
        """
        began = time.perf_counter()
        self._batch, self._start = [], None
        try:
            return await self._run_once()
        finally:
            if self._batch:
                BATCH_SECONDS.observe(time.perf_counter() - began)
            self._note_lag(self._batch, self._start)

    def _note_lag(self, events: list[RecordedEvent], start: int | None = None) -> None:
        """Remembers, per projection behind the head, when the first event it has not
        applied happened (``lag_seconds``). If this batch ends before that event, its
        last event's time stands in (the next one is no older); if it read nothing, or
        began after the projection's position (it waits out a back-off), what was known
        stays."""
        for projection in self.projections:
            position = self.positions.get(projection.name, 0)
            if position >= self.head:
                self.behind_since[projection.name] = None
                continue
            if start is not None and position < start:
                continue
            first = next((e for e in events if e.position > position), None)
            if first is not None:
                self.behind_since[projection.name] = first.occurred_at
            elif events:
                self.behind_since[projection.name] = events[-1].occurred_at

    def lag_seconds(self, name: str) -> float:
        """How long ago the oldest event ``name`` has not applied happened; 0 when it
        has applied every event (as far as this relay knows the head)."""
        since = self.behind_since.get(name)
        if since is None:
            return 0.0
        return max((datetime.now(UTC) - since).total_seconds(), 0.0)

    async def _run_once(self) -> int:
        now = asyncio.get_running_loop().time()
        ready = [p for p in self.projections if self._retry_at.get(p.name, now) <= now]
        if not ready:
            return 0
        start = self._start = min(self.positions[p.name] for p in ready)
        async with self.engine.connect() as conn:
            events = await outbox.read_after(conn, start, self.batch_size)
            self.head = max(self.head, await outbox.head(conn))
        self._batch = events
        parts: list[tuple[Projection, list[RecordedEvent], list[Write]]] = []
        failures: dict[str, BaseException] = {}
        for projection in ready:
            behind = [e for e in events if e.position > self.positions[projection.name]]
            writes, projected = [], 0
            for event in behind:
                try:
                    writes.extend(projection.project(event))
                except Exception as fault:  # a projector's fault: that projection's alone,
                    failures[projection.name] = fault  # which stops just before the event
                    break
                projected += 1
            if projected:
                parts.append((projection, behind[:projected], writes))
        if not parts and not failures:
            fine = [p.name for p in ready if self.positions[p.name] >= self.head]
            for name in fine:
                self.failing.pop(name, None)  # caught up: nothing failing
            await self._clear_errors(fine)
            return len(events)
        mergeable = {p.name: behind[0].position > self.attempted[p.name] for p, behind, _ in parts}
        announced = {p.name: behind[-1].position for p, behind, writes in parts if writes}
        try:
            await checkpoints.announce(
                self.db, {name + self.suffix: end for name, end in announced.items()}, self.epoch
            )
        except checkpoints.Fenced as fenced:
            raise LeaseLost(str(fenced)) from fenced
        for name, end in announced.items():
            self.attempted[name] = max(self.attempted[name], end)
        # Projections own separate collections and checkpoints: apply them side by side,
        # so one batch costs the slowest projection's round trips, not their sum; and
        # each on its own, so one's failure does not cut another's writes half-way.
        timings: dict[str, tuple[int, int]] = {}
        with tracing.span(
            "relay batch", attributes={"cqrs_shop.events": len(events)}
        ) as batch_span:
            results = await asyncio.gather(
                *(
                    _timed(timings, p.name, self.apply(p, behind, writes, mergeable[p.name]))
                    for p, behind, writes in parts
                ),
                return_exceptions=True,
            )
        if batch_span is not None:  # traced
            applied = {
                p.name: {e.position for e in behind}
                for (p, behind, _), result in zip(parts, results, strict=True)
                if not isinstance(result, BaseException)
            }
            tracing.record_projections(events, timings, applied, batch_span)
        advances = []
        for (projection, behind, _), result in zip(parts, results, strict=True):
            if isinstance(result, BaseException):
                failures[projection.name] = result
            else:
                self._backoff.pop(projection.name, None)
                self._retry_at.pop(projection.name, None)
                advances.append(Advance(projection.name, behind[-1].position, result))
        # Fine now: what applied a part, or is caught up (a projection the batch did not
        # reach may still be stuck on an event past it).
        applied_now = {advance.projection for advance in advances}
        fine = [p.name for p in ready if p.name not in failures
                and (p.name in applied_now or self.positions[p.name] >= self.head)]  # fmt: skip
        for name in fine:
            self.failing.pop(name, None)
        if self.feed is not None and advances:
            await self.feed.publish(self.epoch, advances)
        await self._clear_errors(fine)
        for error in failures.values():
            if isinstance(error, LeaseLost | checkpoints.Fenced):
                raise LeaseLost(str(error)) from error
            if not isinstance(error, Exception):
                raise error  # a cancellation, an exit: not a projection's fault
        if failures:
            await self._failed(failures)
            raise ProjectionsFailed(failures) from next(iter(failures.values()))
        return len(events)

    async def apply(
        self,
        projection: Projection,
        events: list[RecordedEvent],
        writes: list[Write] | None = None,
        merge: bool = False,
    ) -> frozenset[Any] | None:
        """Writes one projection's part of a batch (``writes``: its projected writes),
        then moves its checkpoint; ``merge``: the part may be merged (see run_once).
        The keys of the documents it changed (None: any may have)."""
        if writes is None:
            writes = [write for event in events for write in projection.project(event)]
        position = events[-1].position
        if merge:
            writes = coalesce(writes)
        # A part that may not be merged blindly (an earlier attempt may have left some of
        # its events behind) is decided here, document by document, and merged then
        # (``_checked``), whatever the store: a retry costs what a first attempt does.
        # The versions this relay remembers are only kept where it always decides.
        decide = self.check_versions or not merge
        await apply_writes(
            self.db, writes, self.write_chunk, self.suffix, check_versions=decide,
            known=self.known if self.check_versions else VersionCache(), gate=self.write_gate,
        )  # fmt: skip
        async with self.write_gate:  # a checkpoint move is a write like any other
            await self.save_checkpoint(projection.name, position)
        self.positions[projection.name] = position
        if getattr(projection, "keeps_recent", False) and not self.suffix:
            self.progress.recent_events.add(w.document for w in writes if w.document is not None)
        keys = None if any(w.key is None for w in writes) else frozenset(w.key for w in writes)
        self.progress.advance(projection.name, position, keys)
        return keys

    async def save_checkpoint(self, name: str, position: int) -> None:
        await checkpoints.save(
            self.db, name + self.suffix, position, max(self.head, position), self.epoch
        )

    async def _failed(self, failures: dict[str, BaseException]) -> None:
        loop = asyncio.get_running_loop()
        for name, error in failures.items():
            backoff = self._backoff.get(name, 0.05) * 2
            self._backoff[name] = min(backoff, MAX_BACKOFF)
            self._retry_at[name] = loop.time() + self._backoff[name]
            log.error(
                "projection %s failed; retrying in %.1fs", name, self._backoff[name],
                exc_info=error,
            )  # fmt: skip
        # Recorded first: whoever sees the failing flag (metrics) finds lastError stored.
        await self._record_errors(failures)
        self.failing.update({name: repr(error) for name, error in failures.items()})

    async def _idle(self, seconds: float) -> None:
        await wait_set(self._wake, seconds)

    async def _record_errors(self, errors: dict[str, BaseException]) -> None:
        for name, error in errors.items():
            with contextlib.suppress(PyMongoError, checkpoints.Fenced):
                await checkpoints.record_error(self.db, name + self.suffix, repr(error), self.epoch)
                self._errors_recorded.add(name)

    async def _clear_errors(self, names: list[str]) -> None:
        """Clears the recorded error of projections that are fine again but may save no
        checkpoint for a while (caught up: a relay-wide failure recorded it), so that they
        do not show as STALLED. Saving a checkpoint clears it too."""
        for name in names:
            if name in self._errors_recorded:
                try:
                    await checkpoints.clear_error(self.db, name + self.suffix, self.epoch)
                except checkpoints.Fenced as fenced:
                    raise LeaseLost(str(fenced)) from fenced
                except PyMongoError:  # best effort: tried again next turn
                    log.warning("could not clear %s's last error", name, exc_info=True)
                    continue
                self._errors_recorded.discard(name)
