"""``cqrs-shop verify``: the read models held to the outbox they are built from, and to the
write model where that is the truth.

**Replay.** For each chosen projection, every outbox event up to its checkpoint goes
through ``project`` into an exact in-memory model of the store
(:mod:`projections.inmemory`, which refuses any write it cannot model exactly), seeded
as the relay seeds. The outbox is streamed in batches, but the replayed documents are
all held in memory (and the write model's rows, for its check): fine at this shop's
size, a few hundred bytes per document, not for tens of millions of them (an update of
many documents, a customer's rename, also scans its replayed collection).

**Compare.** Every document of the collections serving the projection (named by its
checkpoint after a rebuild, see ``projections.readdb``) is compared with its replayed
twin, field by field and type by type (an int is not a float nor a bool; the order of
fields aside). A document only the replay has is missing from the store, one only
the store has is extra. Nothing is ignored: the store adds no fields of its own.

**A relay that moves on meanwhile.** Each write of a projection touches one document
atomically (an update of many, each of them) and sets its ``version`` to the position
of the event it applies; a batch is announced (``attemptedUntil``) before it writes
anything and checkpointed after (``projections.relay``). So a correct document at
version v is exactly what the events up to v made it, and v is no later than some
announced batch. Verify relies on that, and on nothing timed:

1. It reads the checkpoint (position c), replays up to c, then reads the store.
2. A document at version <= c is compared with the replay at c: no event after its
   version touched it, or it would be newer. A replayed document the store lacks is
   missing (projections never delete), once a read by ``_id`` confirms it (a document
   moving under the cursor may slip past it).
3. A document at version v > c (the relay moved on, or a crash cut a batch short) is
   kept aside. Once the store is read, the checkpoint is read again (position c',
   announced a'); a document above max(c', a') is one no relay can have written: a
   difference. The replay then goes on event by event, and each one kept aside is
   compared with the replay exactly after the events up to its version.
4. A document the replay lacks at c, at a version <= c, can only be the empty
   "shell" a batch in flight inserts first (``projection.coalesce``): it is no
   difference if a shell insert of it lies in (c, max(c', a']] and it equals that.

So a running relay causes no false difference, and on a quiet system (no batch
announced past the checkpoint) every document is compared at the checkpoint, nothing
let off. A rebuild that switches collections while they are read makes the projection
verified again (:data:`SWITCH_ATTEMPTS` times at most).

**Write model.** Its rows and the outbox head H come from one snapshot
(``domain.snapshot``); the replay goes on to H and what it holds is compared with what
the rows say (``projections.writemodel``): products, customers, orders, sales and the
dashboard. The replay stands in for the store here, since step 2 held the store to it.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from sqlalchemy.ext.asyncio import AsyncEngine

from domain import outbox
from domain.events import RecordedEvent
from domain.snapshot import read_state
from projections import checkpoints
from projections.checkpoints import Checkpoint
from projections.inmemory import MISSING, MemoryStore, as_stored
from projections.projection import Projection, collections_of
from projections.writemodel import EXPECTATIONS, Expected

Document = dict[str, Any]
Db = AsyncDatabase[Document]
Report = Callable[[str, int, int], None]
"""``report(task, done, total)``: how far a task is ("replaying the outbox", ...)."""

BATCH = 1000
SWITCH_ATTEMPTS = 3
REPORT_EVERY = 200
FIELDS_SHOWN = 5
REPLAYING = "replaying the outbox"


class VerifyFailed(RuntimeError):
    """The verification could not be completed (which is not a difference)."""


@dataclass(frozen=True, slots=True)
class Difference:
    collection: str
    key: Any
    detail: str
    """For a document in both: ``path store-value != replayed-value; ...``; for the write
    model: ``path read-model-value != write-model-value; ...``."""
    write_model: bool = False

    def __str__(self) -> str:
        where = f"{self.collection}/{self.key}: {self.detail}"
        return f"write model: {where}" if self.write_model else where


@dataclass(frozen=True, slots=True)
class Verification:
    differences: list[Difference]
    positions: dict[str, int]
    """Each projection's checkpoint, at which its documents were compared."""
    documents: int
    """How many store documents were compared."""
    moved_on: int
    """How many of them were newer than their checkpoint: compared at their own version."""
    write_model_head: int | None
    """The outbox head the write model was compared at; None: it was not."""


def _silent(_task: str, _done: int, _total: int) -> None:
    return None


async def verify(
    engine: AsyncEngine,
    db: Db,
    projections: Sequence[Projection],
    *,
    report: Report = _silent,
    batch_size: int = BATCH,
    write_model: bool = True,
) -> Verification:
    """Compares ``projections``' documents in ``db`` with the replayed outbox, and (if
    ``write_model``) the replay with the write model. Raises :class:`VerifyFailed` if
    rebuilds kept switching collections under it, ``inmemory.UnsupportedWrite`` if a
    projection writes what the model cannot apply exactly."""
    runs: list[_Run] = []
    todo = list(projections)
    for _ in range(SWITCH_ATTEMPTS):
        stored = await checkpoints.load_all(db)
        attempt = [_Run(p, stored.get(p.name)) for p in todo]
        await _replay(engine, attempt, {r.name: r.checkpoint for r in attempt}, batch_size, report)
        for run in attempt:
            await _read_store(db, run, report)
        latest = await checkpoints.load_all(db)
        switched = [r for r in attempt if _served(latest.get(r.name)) != r.collections]
        settled = [r for r in attempt if r not in switched]
        for run in settled:
            run.bound_by(latest.get(run.name))
        await _replay(engine, settled, {r.name: r.target for r in settled}, batch_size, report)
        for run in settled:
            run.resolve()
        runs += settled
        todo = [r.projection for r in switched]
        if not todo:
            break
    else:
        names = ", ".join(p.name for p in todo)
        raise VerifyFailed(f"rebuilds kept switching {names} while verify read them; run it again")
    head = None
    checked = [r for r in runs if r.name in EXPECTATIONS]
    if write_model and checked:
        state = await read_state(engine)
        head = state.head
        targets = {r.name: state.head for r in checked}
        await _replay(engine, checked, targets, batch_size, report)
        for run in checked:
            run.differences += _against(run.memory, EXPECTATIONS[run.name](state))
    order = {p.name: n for n, p in enumerate(projections)}
    runs.sort(key=lambda r: order[r.name])
    found = [d for r in runs for d in sorted(r.differences, key=_place)]
    return Verification(
        found,
        {r.name: r.checkpoint for r in runs},
        sum(r.documents for r in runs),
        sum(r.moved_on for r in runs),
        head,
    )


def _place(difference: Difference) -> tuple[bool, str, str]:
    return difference.write_model, difference.collection, str(difference.key)


def _served(checkpoint: Checkpoint | None) -> dict[str, str]:
    return dict(checkpoint.collections) if checkpoint else {}


class _Run:
    """One projection's replay, and the store documents it has still to be compared with."""

    def __init__(self, projection: Projection, checkpoint: Checkpoint | None) -> None:
        self.projection = projection
        self.name = projection.name
        self.checkpoint = checkpoint.position if checkpoint else 0
        self.collections = _served(checkpoint)
        self.memory = MemoryStore()
        self.memory.seed(projection)
        self.position = 0
        """Every event up to here is replayed (and none after)."""
        self.bound = self.checkpoint
        """How far a relay may have written, once the store is read."""
        self.waiting: list[tuple[int, int, str, Document]] = []
        """Store documents newer than the checkpoint: (version, n, collection, document)."""
        self.unknown: dict[tuple[str, Any], Document] = {}
        """Store documents the replay lacks at the checkpoint, not newer than it."""
        self.shells: dict[tuple[str, Any], Document] = {}
        self.differences: list[Difference] = []
        self.documents = 0
        self.moved_on = 0
        self._count = itertools.count()

    def served(self, collection: str) -> str:
        return self.collections.get(collection, collection)

    @property
    def target(self) -> int:
        """How far the replay must go to compare every document kept aside."""
        target = max([self.position, *(version for version, *_ in self.waiting)])
        return max(target, self.bound) if self.unknown else target

    def check(self, collection: str, stored: Document) -> None:
        """Compares a document read from the store now, or keeps it for later (see 3, 4)."""
        self.documents += 1
        key, version = stored.get("_id"), stored.get("version")
        if isinstance(version, int) and not isinstance(version, bool) and version > self.checkpoint:
            heapq.heappush(self.waiting, (version, next(self._count), collection, stored))
            self.moved_on += 1
        elif _hashable(key) and self.memory.find(collection, key) is None:
            self.unknown[(collection, key)] = stored
        else:
            self._compare(collection, stored)

    def apply(self, event: RecordedEvent) -> None:
        self._settle(event.position - 1)
        try:
            writes = self.projection.project(event)
        except Exception as fault:  # the relay stalls on it too: nothing to compare past it
            raise VerifyFailed(
                f"projection {self.projection.name} cannot project event {event.position} "
                f"({event.type}): {fault!r}"
            ) from fault
        for write in writes:
            spot = (write.collection, write.key)
            if write.shell and spot in self.unknown and event.position <= self.bound:
                self.shells.setdefault(spot, as_stored(write.document))
            self.memory.apply(write)
        self.position = event.position

    def reach(self, position: int) -> None:
        """Every event up to ``position`` is replayed: compares what waited for it."""
        self._settle(position)
        self.position = max(self.position, position)

    def bound_by(self, checkpoint: Checkpoint | None) -> None:
        """Takes the checkpoint read again after the store: documents newer than any batch
        announced are differences, the others wait for the replay."""
        position = checkpoint.position if checkpoint else 0
        attempted = checkpoint.attempted_until if checkpoint else 0
        self.bound = max(self.checkpoint, position, attempted)
        for version, _, collection, stored in self.waiting:
            if version > self.bound:
                detail = (
                    f"version {version} is newer than any batch a relay has started "
                    f"(checkpoint {position}, announced up to {attempted})"
                )
                self.differences.append(Difference(collection, stored.get("_id"), detail))
        self.waiting = [w for w in self.waiting if w[0] <= self.bound]
        heapq.heapify(self.waiting)

    def resolve(self) -> None:
        """Judges the documents the replay lacked at the checkpoint (see 4)."""
        for (collection, key), stored in self.unknown.items():
            shell = self.shells.get((collection, key))
            if shell is None or differences(stored, shell):
                self.differences.append(Difference(collection, key, "extra in the store"))
        self.unknown.clear()

    def _settle(self, position: int) -> None:
        while self.waiting and self.waiting[0][0] <= position:
            _, _, collection, stored = heapq.heappop(self.waiting)
            self._compare(collection, stored)

    def _compare(self, collection: str, stored: Document) -> None:
        key = stored.get("_id")
        expected = self.memory.find(collection, key) if _hashable(key) else None
        if expected is None:
            self.differences.append(Difference(collection, key, "extra in the store"))
        elif found := differences(stored, expected):
            self.differences.append(Difference(collection, key, _summary(found)))


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


async def _replay(
    engine: AsyncEngine, runs: list[_Run], targets: dict[str, int], size: int, report: Report
) -> None:
    """Replays the outbox from where each run is up to its target, in one pass for all."""
    active = [r for r in runs if targets[r.name] > r.position]
    if active:
        start = min(r.position for r in active)
        end = max(targets[r.name] for r in active)
        report(REPLAYING, start, end)
        async for events in _events(engine, start, end, size):
            for event in events:
                for run in active:
                    if run.position < event.position <= targets[run.name]:
                        run.apply(event)
            report(REPLAYING, events[-1].position, end)
        report(REPLAYING, end, end)
    for run in runs:
        run.reach(targets[run.name])


async def _events(
    engine: AsyncEngine, after: int, up_to: int, size: int
) -> AsyncIterator[list[RecordedEvent]]:
    """The events in ``(after, up_to]``, oldest first, a batch (one read) at a time."""
    while after < up_to:
        async with engine.connect() as conn:
            events = [e for e in await outbox.read_after(conn, after, size) if e.position <= up_to]
        if not events:
            return
        yield events
        after = events[-1].position


async def _read_store(db: Db, run: _Run, report: Report) -> None:
    for collection in collections_of(run.projection):
        replayed = run.memory.collection(collection)
        task, done, seen = f"comparing {collection}", 0, set()
        report(task, 0, len(replayed))
        async for stored in db[run.served(collection)].find({}):
            key = stored.get("_id")
            if _hashable(key):
                if key in seen:  # it moved under the cursor: compared already
                    continue
                seen.add(key)
            run.check(collection, stored)
            done += 1
            if done % REPORT_EVERY == 0:
                report(task, done, max(len(replayed), done))
        for key in [k for k in replayed if k not in seen]:
            again = await db[run.served(collection)].find_one({"_id": key})
            if again is None:
                run.differences.append(Difference(collection, key, "missing in the store"))
            else:
                run.check(collection, again)
        report(task, done, max(len(replayed), done))


def _against(memory: MemoryStore, expected: Expected) -> list[Difference]:
    """The replayed documents against the write model's expectations (fields it names)."""
    found = []
    for collection, documents in expected.items():
        replayed = memory.collection(collection)
        for key, fields in documents.items():
            document = replayed.get(key)
            if document is None:
                detail = "in the write model, missing in the read model"
                found.append(Difference(collection, key, detail, write_model=True))
            elif changed := differences({f: document.get(f, MISSING) for f in fields}, fields):
                found.append(Difference(collection, key, _summary(changed), write_model=True))
        for key in replayed:
            if key not in documents:
                detail = "in the read model, not in the write model"
                found.append(Difference(collection, key, detail, write_model=True))
    return found


# --- comparing documents -------------------------------------------------------------------


def differences(found: Any, expected: Any, path: str = "") -> list[str]:
    """``path found != expected`` for each leaf that differs (documents by field, arrays
    of the same length by index)."""
    if isinstance(found, dict) and isinstance(expected, dict):
        changed = []
        for name in [*expected, *(n for n in found if n not in expected)]:
            inner = f"{path}.{name}" if path else str(name)
            changed += differences(found.get(name, MISSING), expected.get(name, MISSING), inner)
        return changed
    if isinstance(found, list) and isinstance(expected, list) and len(found) == len(expected):
        return [
            change
            for n, (a, b) in enumerate(zip(found, expected, strict=True))
            for change in differences(a, b, f"{path}.{n}")
        ]
    return [] if same(found, expected) else [f"{path} {show(found)} != {show(expected)}"]


def same(a: Any, b: Any) -> bool:
    """Equal as stored values: of one kind (bool, int, float, ...) and equal."""
    if _kind(a) != _kind(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b) or (a != a and b != b)  # NaN is NaN


def _kind(value: Any) -> str:
    if value is MISSING:
        return "absent"
    for kind in (bool, int, float, str, dict, list, datetime):
        if isinstance(value, kind):
            return kind.__name__
    return type(value).__name__


def show(value: Any) -> str:
    """A value in a difference, short."""
    if value is MISSING:
        return "(absent)"
    if isinstance(value, datetime):
        text = value.isoformat(timespec="milliseconds")
    elif isinstance(value, int) and not isinstance(value, bool):
        text = str(int(value))  # not Int64(5)
    elif isinstance(value, list) and len(repr(value)) > 60:
        text = f"[{len(value)} items]"
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _summary(changes: list[str]) -> str:
    shown = "; ".join(changes[:FIELDS_SHOWN])
    more = len(changes) - FIELDS_SHOWN
    return f"{shown}; and {more} more" if more > 0 else shown
