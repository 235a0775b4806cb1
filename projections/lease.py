"""A lease in Mongo with a fencing epoch, so one relay at a time applies events.

The lease document::

    {_id, owner, epoch, ttl, renewedAt, handoverTo, handoverTtl, handoverAt}

- **Epoch.** Every new tenure (any take-over, including taking back a lease this
  process held before) increments ``epoch``; renewals keep it. The epoch only grows.
  A relay reloads everything it remembers when its epoch changes, and fences its
  checkpoint moves with it (``projections.checkpoints``): once a newer epoch has
  written a checkpoint, writes of older epochs to it are refused.
- **Expiry by the store's clock.** ``renewedAt`` is set by the store itself
  (``$currentDate``) and compared with the store's own time (``hello.localTime``),
  so no process compares its wall clock with another machine's. ``ttl`` (a duration)
  is the holder's. Every change of hands is a compare-and-set on
  ``(owner, epoch, renewedAt)``: a renewal that lands first makes a take-over miss.
- **Holder's view.** The holder counts its tenure on its own monotonic clock from
  *before* the renewal it sent (:meth:`held_for`), so it stops before any other can
  take over, clocks running at the same rate.
- **Handover.** A rebuild asks for the lease (:meth:`request_handover`); while that
  request is fresh (renewed within its ``handoverTtl`` by the store's clock) nobody
  else takes or renews the lease, and the holder gives it up. A requester that dies
  lets its request expire like a lease.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

COLLECTION = "relay_leases"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Document = dict[str, Any]


async def store_time(db: AsyncDatabase[Document]) -> datetime:
    """The read store's own clock (what ``$currentDate`` writes)."""
    reply = await db.client.admin.command("hello")
    now: datetime = reply["localTime"]
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)


def _utc(moment: datetime | None) -> datetime:
    if moment is None:
        return EPOCH
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _expired(document: Document, now: datetime) -> bool:
    return _utc(document.get("renewedAt")) + timedelta(seconds=document.get("ttl", 0)) <= now


def _handover_pending(document: Document, now: datetime) -> bool:
    if document.get("handoverTo") is None:
        return False
    ttl = timedelta(seconds=document.get("handoverTtl", 0))
    return _utc(document.get("handoverAt")) + ttl > now


class Lease:
    def __init__(self, db: AsyncDatabase[Document], name: str = "relay", ttl: float = 10.0) -> None:
        self.db = db
        self.name = name
        self.ttl = timedelta(seconds=ttl)
        self.owner = str(uuid.uuid4())
        self.epoch: int | None = None
        """The epoch of this process's current (or last) tenure."""
        self._held_until = 0.0  # monotonic; conservative: counted from before the request

    @property
    def _collection(self) -> AsyncCollection[Document]:
        return self.db[COLLECTION]

    async def acquire(self) -> bool:
        """Renews the lease if this tenure still holds it, else takes it if it is free,
        released or expired (a new tenure, a new epoch); whether we hold it now.

        While another's handover request is fresh, nobody else takes or renews the
        lease, and a holder gives it up at once.
        """
        asked_at = time.monotonic()
        current = await self._current()
        now = await store_time(self.db)
        mine = current.get("owner") == self.owner and current.get("epoch") == self.epoch
        if current.get("handoverTo") not in (None, self.owner) and _handover_pending(current, now):
            if mine:
                await self.release()
            return False
        if mine:
            return await self._renew(asked_at)
        if current.get("owner") is not None and not _expired(current, now):
            self._held_until = 0.0
            return False
        epoch = int(current.get("epoch", 0)) + 1
        changes: Document = {"owner": self.owner, "epoch": epoch, "ttl": self.ttl.total_seconds()}
        if current.get("handoverTo") == self.owner:
            changes["handoverTo"] = None
        result = await self._collection.update_one(
            self._unchanged(current),
            {"$set": changes, "$currentDate": {"renewedAt": True}},
        )
        held = result.matched_count == 1
        if held:
            self.epoch = epoch
        self._held_until = asked_at + self.ttl.total_seconds() if held else 0.0
        return held

    async def renew(self) -> bool:
        """Renews this tenure; False (and no new tenure) if it has ended."""
        return await self._renew(time.monotonic())

    async def _renew(self, asked_at: float) -> bool:
        if self.epoch is None:
            return False
        result = await self._collection.update_one(
            {"_id": self.name, "owner": self.owner, "epoch": self.epoch},
            {"$set": {"ttl": self.ttl.total_seconds()}, "$currentDate": {"renewedAt": True}},
        )
        held = result.matched_count == 1
        self._held_until = asked_at + self.ttl.total_seconds() if held else 0.0
        return held

    def held_for(self) -> float:
        """Seconds this process can still be sure it holds the lease (≤ 0: it cannot)."""
        return self._held_until - time.monotonic()

    async def release(self) -> None:
        """Gives the lease up (keeping its epoch); anyone may take it at once."""
        self._held_until = 0.0
        if self.epoch is not None:
            await self._collection.update_one(
                {"_id": self.name, "owner": self.owner, "epoch": self.epoch},
                {"$set": {"owner": None}},
            )
        await self._collection.update_one(
            {"_id": self.name, "handoverTo": self.owner}, {"$set": {"handoverTo": None}}
        )

    async def request_handover(self) -> None:
        """Asks the holder to give the lease to us (call it again to keep the request
        fresh while waiting); :meth:`acquire` then gets it."""
        await self._current()
        await self._collection.update_one(
            {"_id": self.name},
            {
                "$set": {"handoverTo": self.owner, "handoverTtl": self.ttl.total_seconds()},
                "$currentDate": {"handoverAt": True},
            },
        )

    async def _current(self) -> Document:
        await self._collection.update_one(
            {"_id": self.name},
            {"$setOnInsert": {"owner": None, "epoch": 0, "ttl": 0, "renewedAt": EPOCH,
                              "handoverTo": None}},
            upsert=True,
        )  # fmt: skip
        document: Document | None = await self._collection.find_one({"_id": self.name})
        assert document is not None
        return document

    def _unchanged(self, current: Document) -> Document:
        """A filter that matches the lease document only as it was read."""
        return {
            "_id": self.name,
            "owner": current.get("owner"),
            "epoch": current.get("epoch", 0),
            "renewedAt": current.get("renewedAt", EPOCH),
        }


async def holder_alive(db: AsyncDatabase[Document], name: str = "relay") -> bool:
    """Whether some relay holds an unexpired lease (by the store's clock)."""
    document = await db[COLLECTION].find_one({"_id": name})
    if document is None or document.get("owner") is None:
        return False
    return not _expired(document, await store_time(db))
