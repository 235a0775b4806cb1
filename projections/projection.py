"""What a projection is: a pure mapping from an event to version-guarded Mongo writes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pymongo import IndexModel, InsertOne, UpdateMany, UpdateOne

from domain.events import DomainEvent, RecordedEvent

MongoWrite = InsertOne[dict[str, Any]] | UpdateOne | UpdateMany


@dataclass(frozen=True, slots=True)
class Write:
    """One Mongo write of a projection.

    ``key`` is the ``_id`` of the one document it touches, so live subscribers of
    that document can be told; ``None`` when it may touch many.
    """

    collection: str
    operation: MongoWrite
    key: Any = None
    guard: int | None = None
    """For a guarded update: the event position it must be newer than."""
    update: dict[str, Any] | None = None
    """For a guarded update: its update document (for :func:`coalesce`)."""
    document: dict[str, Any] | None = None
    """For an insert: the document it creates."""
    shell: bool = False
    """An insert of an empty document (version 0) that only makes sure it exists, for
    guarded updates to fill: updates around it merge, and it may go first."""


class Projection(Protocol):
    """A read model built only from events.

    ``project`` must be pure and every write it returns guarded by the target
    document's ``version`` (the position of the last event applied to it), so that
    applying an event twice, or an older event after a newer one, changes nothing.
    Events it does not know return no writes and still advance its checkpoint.
    """

    name: str
    indexes: dict[str, Sequence[IndexModel]]

    def project(self, event: RecordedEvent) -> list[Write]: ...


Projector = Callable[[RecordedEvent], list[Write]]
E = TypeVar("E", bound=DomainEvent)
MERGEABLE = frozenset({"$set", "$inc", "$push", "$max", "$min", "$unset"})


def collections_of(projection: Projection) -> list[str]:
    """Every collection ``projection`` writes: those it indexes and those it seeds."""
    seeds: dict[str, Any] = getattr(projection, "seed_documents", {})
    return sorted(set(projection.indexes) | set(seeds))


def on(
    event_type: type[E], project: Callable[[RecordedEvent, E], list[Write]]
) -> tuple[str, Projector]:
    """A projector of ``event_type``'s events, keyed by its stored name, for :func:`projectors`.

    ``project`` gets the recorded event (where it is in the log: ``position``,
    ``aggregate_id``, ``occurred_at``) and its typed payload, so that it reads
    ``event.quantity``; mypy checks that it takes ``event_type``.
    """

    def run(e: RecordedEvent) -> list[Write]:
        payload = e.payload
        if not isinstance(payload, event_type):
            raise TypeError(f"event {e.position} ({e.type}) decoded to {type(payload).__name__}")
        return project(e, payload)

    return event_type.type_name(), run


def projectors(*entries: tuple[str, Projector]) -> dict[str, Projector]:
    """The table :func:`dispatch` reads, from :func:`on` entries."""
    return dict(entries)


def dispatch(projectors: Mapping[str, Projector], event: RecordedEvent) -> list[Write]:
    """The writes of the projector for ``event``'s type; none for types it ignores."""
    projector = projectors.get(event.type)
    return [] if projector is None else projector(event)


def newer_than(document_id: Any, event: RecordedEvent) -> dict[str, Any]:
    """The filter that lets ``event`` change a document only once, and never backwards."""
    return {"_id": document_id, "version": {"$lt": event.position}}


def guarded(collection: str, key: Any, event: RecordedEvent, update: dict[str, Any]) -> Write:
    """An update of document ``key`` that applies ``event`` at most once, and sets its version."""
    update = {**update, "$set": {**update.get("$set", {}), "version": event.position}}
    return Write(
        collection, _guarded_update(key, event.position, update), key, event.position, update
    )


def _guarded_update(key: Any, guard: int, update: dict[str, Any]) -> UpdateOne:
    return UpdateOne({"_id": key, "version": {"$lt": guard}}, update)


def coalesce(writes: Sequence[Write]) -> list[Write]:
    """Merges the guarded updates of one document in a batch into one update.

    The merged update is guarded by the first event and sets the last one's version:
    it applies all of them or none. That equals applying them one by one unless the
    document already holds some but not all of them, which only an earlier attempt
    interrupted half-way can leave behind: the relay announces the end of every
    batch before writing it and merges only above every end announced before
    (``checkpoints.announce``).

    ``$set``, ``$inc``, ``$push`` (with ``$each``), ``$max``, ``$min`` and ``$unset``
    merge where one update says exactly what the two do one after the other (see
    :func:`_merge`); anything else touching the document (an insert, an update of many
    documents) ends the run.
    Each merged update keeps the place of the first one it absorbed, which keeps
    every document's own order of writes.
    """
    # Shells go first: each only creates an empty document that every guarded update
    # applies to, so an update that would have found no document before its shell now
    # finds it (none of the projections' updates mind), and none is left behind.
    shells = {(w.collection, w.key): w for w in reversed(writes) if w.shell}  # the first
    merged: list[Write] = list(reversed(shells.values()))
    open_runs: dict[tuple[str, Any], int] = {}
    for write in writes:
        if write.shell:
            continue
        if write.guard is None or write.update is None:
            if write.key is None:
                open_runs.clear()
            else:
                open_runs.pop((write.collection, write.key), None)
            merged.append(write)
            continue
        run = open_runs.get((write.collection, write.key))
        combined = None if run is None else _merge(merged[run], write)
        if run is not None and combined is not None:
            merged[run] = combined
        else:
            open_runs[(write.collection, write.key)] = len(merged)
            merged.append(write)
    return merged


def _merge(first: Write, then: Write) -> Write | None:
    """``first`` then ``then`` as one update, or None where one update cannot say exactly
    what the two do one after the other.

    A path of ``then`` that is a parent or a child of a path ``first`` changes, by any
    operator, is never merged (MongoDB refuses such updates, or their result would
    differ: a parent created on the way, say). The same path merges for a later
    ``$set`` over a ``$set`` or ``$inc``, ``$inc`` over ``$inc`` or a numeric
    ``$set``, ``$push`` over ``$push``, ``$max``/``$min`` over itself, and ``$unset``
    of a path nothing else touched.
    """
    assert first.update is not None
    assert then.update is not None
    assert first.guard is not None
    if not {*first.update, *then.update} <= MERGEABLE:
        return None
    merged: dict[str, dict[str, Any]] = {op: dict(first.update.get(op, {})) for op in MERGEABLE}
    for path, value in merged["$push"].items():
        if (items := _each(value)) is None:
            return None
        merged["$push"][path] = items
    for op, fields in then.update.items():
        for path, value in fields.items():
            if any(_related(path, other) for taken in merged.values() for other in taken):
                return None
            if not _merge_path(merged, op, path, value):
                return None
    update: dict[str, Any] = {"$set": merged["$set"]}
    for op in ("$inc", "$max", "$min", "$unset"):
        if merged[op]:
            update[op] = merged[op]
    if merged["$push"]:
        update["$push"] = {path: {"$each": items} for path, items in merged["$push"].items()}
    operation = _guarded_update(first.key, first.guard, update)
    return Write(first.collection, operation, first.key, first.guard, update)


def _merge_path(merged: dict[str, dict[str, Any]], op: str, path: str, value: Any) -> bool:
    """Folds ``op path value`` into ``merged`` (same path only); False if it cannot."""
    holders = {taken for taken, fields in merged.items() if path in fields}
    if op == "$set" and holders <= {"$set", "$inc"}:
        merged["$inc"].pop(path, None)  # a later $set wins over an earlier $inc
        merged["$set"][path] = value
        return True
    if op == "$inc" and _number(value) and holders <= {"$inc"}:
        merged["$inc"][path] = merged["$inc"].get(path, 0) + value
        return True
    if op == "$inc" and _number(value) and holders == {"$set"}:
        if not _number(merged["$set"][path]):
            return False
        merged["$set"][path] += value
        return True
    if op == "$push" and holders <= {"$push"}:
        items = _each(value)
        if items is None:
            return False
        merged["$push"][path] = [*merged["$push"].get(path, []), *items]
        return True
    if op in ("$max", "$min") and _number(value) and holders <= {op}:
        pick = max if op == "$max" else min
        current = merged[op].get(path)
        merged[op][path] = value if current is None else pick(current, value)
        return True
    if op == "$unset" and not holders:
        merged["$unset"][path] = ""
        return True
    return False


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _related(path: str, other: str) -> bool:
    """Whether one of the two paths is a parent of the other (not the same path)."""
    return path.startswith(other + ".") or other.startswith(path + ".")


def _each(value: Any) -> list[Any] | None:
    """The items of a ``$push`` given as ``{"$each": [...]}`` alone; None for other forms."""
    if isinstance(value, dict) and set(value) == {"$each"} and isinstance(value["$each"], list):
        return list(value["$each"])
    return None


def insert_once(
    collection: str, key: Any, document: dict[str, Any], *, shell: bool = False
) -> Write:
    """Creates document ``key``; a replay hits the duplicate key and changes nothing.

    A plain insert, not an upsert: the relay ignores duplicate-key errors, and an
    insert never has to find the document first (FerretDB scans for that).
    """
    document = {"_id": key, **document}
    return Write(collection, InsertOne(document), key, document=document, shell=shell)
