"""What a projection is: a pure mapping from an event to version-guarded Mongo writes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pymongo import IndexModel, InsertOne, UpdateMany, UpdateOne

from domain.events import RecordedEvent

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


def newer_than(document_id: Any, event: RecordedEvent) -> dict[str, Any]:
    """The filter that lets ``event`` change a document only once, and never backwards."""
    return {"_id": document_id, "version": {"$lt": event.position}}


def guarded(collection: str, key: Any, event: RecordedEvent, update: dict[str, Any]) -> Write:
    """An update of document ``key`` that applies ``event`` at most once, and sets its version."""
    update = {**update, "$set": {**update.get("$set", {}), "version": event.position}}
    return Write(collection, UpdateOne(newer_than(key, event), update), key)


def insert_once(collection: str, key: Any, document: dict[str, Any]) -> Write:
    """Creates document ``key``; a replay hits the duplicate key and changes nothing.

    A plain insert, not an upsert: the relay ignores duplicate-key errors, and an
    insert never has to find the document first (FerretDB scans for that).
    """
    return Write(collection, InsertOne({"_id": key, **document}), key)
