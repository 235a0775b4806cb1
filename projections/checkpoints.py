"""One checkpoint document per projection, in Mongo beside the documents it vouches for."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

COLLECTION = "projection_checkpoints"
Document = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    name: str
    position: int
    head: int
    updated_at: datetime | None
    last_error: str | None
    rebuilding: bool = False
    merged_until: int = 0
    """The end of the last batch whose updates were merged (see ``Relay.apply``)."""


async def load_all(db: AsyncDatabase[Document]) -> dict[str, Checkpoint]:
    checkpoints = {}
    async for doc in db[COLLECTION].find({}):
        checkpoints[doc["_id"]] = Checkpoint(
            name=doc["_id"],
            position=int(doc.get("position", 0)),
            head=int(doc.get("head", 0)),
            updated_at=doc.get("updatedAt"),
            last_error=doc.get("lastError"),
            rebuilding=bool(doc.get("rebuilding", False)),
            merged_until=int(doc.get("mergedUntil", 0)),
        )
    return checkpoints


async def save(db: AsyncDatabase[Document], name: str, position: int, head: int) -> None:
    """Moves the checkpoint forward; ``$max`` keeps it from ever going back."""
    await db[COLLECTION].update_one(
        {"_id": name},
        {
            "$max": {"position": position, "head": head},
            "$set": {"updatedAt": datetime.now(UTC), "lastError": None},
        },
        upsert=True,
    )


async def record_error(db: AsyncDatabase[Document], name: str, error: str) -> None:
    await db[COLLECTION].update_one(
        {"_id": name},
        {"$set": {"lastError": error[:1000], "updatedAt": datetime.now(UTC)}},
        upsert=True,
    )


async def announce_merged(db: AsyncDatabase[Document], name: str, until: int) -> None:
    """Records, before writing them, that updates up to ``until`` are being merged.

    A batch of merged updates is all or nothing per document only if it completes;
    a relay taking over after a crash must not merge again below this position.
    """
    await db[COLLECTION].update_one({"_id": name}, {"$max": {"mergedUntil": until}}, upsert=True)
