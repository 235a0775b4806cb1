"""The audit trail read model: every event, in order, with its payload."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from domain.events import RecordedEvent
from projections import paging
from projections.paging import Page
from projections.projection import Write, insert_once

NAME = "audit_trail"
"""The projection's name: its checkpoint, and what ``minVersion`` waits on."""
COLLECTION = "events"
Db = AsyncDatabase[dict[str, Any]]


class AuditTrailProjection:
    name = NAME
    keeps_recent = True
    """The relay hands the documents it writes to ``Progress.recent_events``."""
    indexes: dict[str, Sequence[IndexModel]] = {
        COLLECTION: [
            IndexModel([("aggregateId", ASCENDING), ("_id", ASCENDING)]),
            IndexModel([("type", ASCENDING), ("_id", ASCENDING)]),
        ]
    }

    def project(self, e: RecordedEvent) -> list[Write]:
        document = {
            "eventId": e.event_id,
            "type": e.type,
            "aggregateType": e.aggregate_type,
            "aggregateId": e.aggregate_id,
            "aggregateVersion": e.aggregate_version,
            "occurredAt": e.occurred_at,
            "data": e.data,
            "version": e.position,
        }
        return [insert_once(COLLECTION, e.position, document)]


async def audit_trail(db: Db, aggregate_id: str, first: int, after: str | None) -> Page:
    """Every event of one aggregate, oldest first."""
    query: dict[str, Any] = {"aggregateId": aggregate_id}
    if after is not None:
        (last,) = paging.decode("audit", after, int)
        query["_id"] = {"$gt": last}
    documents = await db[COLLECTION].find(query).sort("_id", ASCENDING).limit(first + 1).to_list()
    return paging.page_of(documents, first, lambda d: paging.encode("audit", d["_id"]))


async def events_between(
    db: Db, after: int, up_to: int, types: Sequence[str] | None, limit: int
) -> list[dict[str, Any]]:
    """Events with ``after < position <= up_to``, oldest first, of the given types if any."""
    query: dict[str, Any] = {"_id": {"$gt": after, "$lte": up_to}}
    if types:
        query["type"] = {"$in": list(types)}
    return await db[COLLECTION].find(query).sort("_id", ASCENDING).limit(limit).to_list()
