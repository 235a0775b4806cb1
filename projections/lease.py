"""A time-bound lease in Mongo, so only one relay process applies events at a time.

There is no fencing token. The relay checks, before each bulk write, that it
still holds the lease for longer than a safety margin by its own monotonic clock,
and renews it (or stops) when not (``Relay``'s write gate). What is left is a
stall between that check and the write reaching Mongo.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

COLLECTION = "relay_leases"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Lease:
    def __init__(
        self, db: AsyncDatabase[dict[str, Any]], name: str = "relay", ttl: float = 10.0
    ) -> None:
        self.db = db
        self.name = name
        self.ttl = timedelta(seconds=ttl)
        self.owner = str(uuid.uuid4())
        self._held_until = 0.0  # monotonic; conservative: counted from before the request

    async def acquire(self) -> bool:
        """Takes the lease if free or expired, or renews it if ours; whether we hold it.

        While another process has asked for a handover, nobody else takes or renews
        the lease, and a holder gives it up at once.
        """
        collection = self.db[COLLECTION]
        asked_at = time.monotonic()
        now = datetime.now(UTC)
        await self._ensure_document()
        current = await collection.find_one({"_id": self.name})
        wanted_by = current.get("handoverTo") if current else None
        if wanted_by not in (None, self.owner):
            if current and current.get("owner") == self.owner:
                await self.release()
            return False
        result = await collection.update_one(
            {"_id": self.name, "$or": [{"owner": self.owner}, {"expiresAt": {"$lt": now}}]},
            {"$set": {"owner": self.owner, "expiresAt": now + self.ttl}},
        )
        held = result.matched_count == 1
        self._held_until = asked_at + self.ttl.total_seconds() if held else 0.0
        return held

    def held_for(self) -> float:
        """Seconds this process can still be sure it holds the lease (≤ 0: it cannot)."""
        return self._held_until - time.monotonic()

    async def release(self) -> None:
        self._held_until = 0.0
        await self.db[COLLECTION].update_one(
            {"_id": self.name, "owner": self.owner}, {"$set": {"expiresAt": EPOCH}}
        )
        await self.db[COLLECTION].update_one(
            {"_id": self.name, "handoverTo": self.owner}, {"$set": {"handoverTo": None}}
        )

    async def request_handover(self) -> None:
        """Asks the holder to give the lease to us; :meth:`acquire` then gets it."""
        await self._ensure_document()
        await self.db[COLLECTION].update_one(
            {"_id": self.name}, {"$set": {"handoverTo": self.owner}}
        )

    async def _ensure_document(self) -> None:
        await self.db[COLLECTION].update_one(
            {"_id": self.name},
            {"$setOnInsert": {"owner": None, "expiresAt": EPOCH, "handoverTo": None}},
            upsert=True,
        )


async def holder_alive(db: AsyncDatabase[dict[str, Any]], name: str = "relay") -> bool:
    """Whether some relay holds an unexpired lease."""
    doc = await db[COLLECTION].find_one({"_id": name})
    return doc is not None and doc["expiresAt"] > datetime.now(UTC)
