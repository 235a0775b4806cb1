"""A time-bound lease in Mongo, so only one relay process applies events at a time.

There is no fencing token: a relay that stalls past its lease may still finish one
batch after another took over. That is safe because every projection write is
version-guarded and checkpoints only move forward.
"""

from __future__ import annotations

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

    async def acquire(self) -> bool:
        """Takes the lease if free or expired, or renews it if ours; whether we hold it.

        While another process has asked for a handover, nobody else takes or renews
        the lease, and a holder gives it up at once.
        """
        collection = self.db[COLLECTION]
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
        return result.matched_count == 1

    async def release(self) -> None:
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
