"""One checkpoint document per projection, in Mongo beside the documents it vouches for.

``{_id: name, position, head, epoch, attemptedUntil, collections, lastError, ...}``

- ``epoch``: the newest relay tenure that wrote here (see ``projections.lease``).
  Writes that carry an epoch are *fenced*: they apply only while no newer epoch
  has written the document, so a relay that lost its lease cannot move the
  checkpoint any more. A relay fences every checkpoint when its tenure starts.
- ``attemptedUntil``: the end of the newest batch any relay may have started to
  write; announced *before* writing (see ``Relay.run_once`` and
  ``projection.coalesce``).
- ``collections``: which physical collection serves each of the projection's read
  models (absent: the collection of the same name). A rebuild switches them with
  the position in one single-document update, so readers never see a half swap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

COLLECTION = "projection_checkpoints"
REBUILDS = "projection_rebuilds"
FENCE_ATTEMPTS = 5
Document = dict[str, Any]


class Fenced(RuntimeError):
    """A newer relay tenure has written this checkpoint; an older one may not."""

    def __init__(self, message: str, epoch: int = 0) -> None:
        super().__init__(message)
        self.epoch = epoch
        """The newest epoch found, where known."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    name: str
    position: int
    head: int
    updated_at: datetime | None
    last_error: str | None
    attempted_until: int = 0
    """The end of the newest batch a relay may have started writing."""
    epoch: int = 0
    collections: dict[str, str] = field(default_factory=dict)


async def load_all(db: AsyncDatabase[Document]) -> dict[str, Checkpoint]:
    checkpoints = {}
    async for doc in db[COLLECTION].find({}):
        checkpoints[doc["_id"]] = Checkpoint(
            name=doc["_id"],
            position=int(doc.get("position", 0)),
            head=int(doc.get("head", 0)),
            updated_at=doc.get("updatedAt"),
            last_error=doc.get("lastError"),
            # mergedUntil: what releases before the epoch called it
            attempted_until=max(int(doc.get("attemptedUntil", 0)), int(doc.get("mergedUntil", 0))),
            epoch=int(doc.get("epoch", 0)),
            collections=dict(doc.get("collections") or {}),
        )
    return checkpoints


def _fenced(name: str, epoch: int | None) -> Document:
    if epoch is None:
        return {"_id": name}
    return {"_id": name, "epoch": {"$lte": epoch}}


def _epoch(epoch: int | None) -> Document:
    return {} if epoch is None else {"epoch": epoch}


def _check_not_fenced(matched: int, expected: int, name: str, epoch: int | None) -> None:
    """Raises :class:`Fenced` when a fenced write matched fewer documents than it meant to."""
    if epoch is not None and matched < expected:
        raise Fenced(f"checkpoint {name}: a relay tenure newer than {epoch} has started")


async def fence(db: AsyncDatabase[Document], names: Iterable[str], epoch: int) -> None:
    """Starts tenure ``epoch`` on these checkpoints: writes of older epochs now fail.

    Raises :class:`Fenced` if a newer epoch got there first.
    """
    names = list(names)
    collection = db[COLLECTION]
    await collection.bulk_write(
        [UpdateOne({"_id": n}, {"$setOnInsert": {"epoch": 0}}, upsert=True) for n in names],
        ordered=False,
    )
    for _ in range(FENCE_ATTEMPTS):
        await collection.update_many(
            {"_id": {"$in": names},
             "$or": [{"epoch": {"$lte": epoch}}, {"epoch": {"$exists": False}}]},
            {"$set": {"epoch": epoch}},
        )  # fmt: skip
        found = [d.get("epoch", 0) async for d in collection.find({"_id": {"$in": names}})]
        if max(found, default=0) > epoch:
            raise Fenced(f"a relay tenure newer than {epoch} has started", max(found))
        # On FerretDB a write racing this one can replace a fenced document with what
        # it read before: fence again until every one holds.
        if all(found_epoch == epoch for found_epoch in found):
            return
    raise Fenced(f"checkpoints kept changing while tenure {epoch} fenced them", epoch)


async def save(
    db: AsyncDatabase[Document], name: str, position: int, head: int, epoch: int | None = None
) -> None:
    """Moves the checkpoint forward; ``$max`` keeps it from ever going back.

    With an ``epoch``, only while no newer tenure has written it (else :class:`Fenced`).
    """
    result = await db[COLLECTION].update_one(
        _fenced(name, epoch),
        {
            "$max": {"position": position, "head": head},
            "$set": {"updatedAt": datetime.now(UTC), "lastError": None, **_epoch(epoch)},
        },
        upsert=epoch is None,
    )
    _check_not_fenced(result.matched_count, 1, name, epoch)


async def record_error(
    db: AsyncDatabase[Document], name: str, error: str, epoch: int | None = None
) -> None:
    """Notes a projection's last error; with an ``epoch``, fenced as :func:`save`."""
    result = await db[COLLECTION].update_one(
        _fenced(name, epoch),
        {"$set": {"lastError": error[:1000], "updatedAt": datetime.now(UTC)}},
        upsert=epoch is None,
    )
    _check_not_fenced(result.matched_count, 1, name, epoch)


async def clear_error(db: AsyncDatabase[Document], name: str, epoch: int | None = None) -> None:
    """Clears a projection's last error (it is fine again); fenced as :func:`save`."""
    result = await db[COLLECTION].update_one(
        _fenced(name, epoch), {"$set": {"lastError": None, "updatedAt": datetime.now(UTC)}}
    )
    _check_not_fenced(result.matched_count, 1, name, epoch)


async def announce(
    db: AsyncDatabase[Document], attempts: Mapping[str, int], epoch: int | None = None
) -> None:
    """Records, before a batch writes anything, how far each projection's writes may go.

    A batch written half-way leaves documents holding some of its events but not all;
    a merged update is only right where no earlier attempt may have written (see
    ``projection.coalesce``), so no relay merges below an announced end. One round
    trip for all projections of a batch. With an ``epoch``: fenced, as :func:`save`.
    """
    if not attempts:
        return
    result = await db[COLLECTION].bulk_write(
        [
            UpdateOne(
                _fenced(name, epoch),
                {"$max": {"attemptedUntil": until}, "$set": _epoch(epoch)}
                if epoch is not None
                else {"$max": {"attemptedUntil": until}},
                upsert=epoch is None,
            )
            for name, until in attempts.items()
        ],
        ordered=False,
    )
    _check_not_fenced(result.matched_count, len(attempts), ", ".join(attempts), epoch)


async def switch(
    db: AsyncDatabase[Document],
    name: str,
    position: int,
    head: int,
    collections: dict[str, str],
    epoch: int,
) -> None:
    """Switches projection ``name`` to rebuilt ``collections`` at ``position``, in one
    update (fenced, as :func:`save`): readers see the old or the new, never a mix."""
    result = await db[COLLECTION].update_one(
        _fenced(name, epoch),
        {
            "$set": {
                "position": position, "head": head, "collections": collections,
                "epoch": epoch, "updatedAt": datetime.now(UTC), "lastError": None,
            }
        },
    )  # fmt: skip
    _check_not_fenced(result.matched_count, 1, name, epoch)


async def set_rebuilding(db: AsyncDatabase[Document], names: Iterable[str], on: bool) -> None:
    """Marks projections as being rebuilt, in documents of their own: the checkpoints
    have one writer, the relay holding the lease (a concurrent update on FerretDB
    can undo another's)."""
    for name in names:
        await db[REBUILDS].update_one({"_id": name}, {"$set": {"rebuilding": on}}, upsert=True)


async def rebuilding(db: AsyncDatabase[Document]) -> set[str]:
    """The projections a rebuild marked as being rebuilt."""
    return {d["_id"] async for d in db[REBUILDS].find({"rebuilding": True})}
