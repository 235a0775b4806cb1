"""A lease with a fencing epoch, so one relay (or one rebuild) at a time writes.

The lease is a row of ``relay_leases`` in the write store, whose conditional
UPDATEs are atomic. (A first version kept it in Mongo; on FerretDB 1.24 an update
finds the document and then replaces it by ``_id`` without checking its filter
again, so two processes could take the same lease.)

- **Epoch.** Every new tenure (any take-over, including taking back a lease this
  process held before) increments ``epoch``; renewals keep it. The epoch only grows.
  A relay reloads everything it remembers when its epoch changes, and fences its
  checkpoint moves with it (``projections.checkpoints``).
- **Expiry by the database's clock.** ``expires_at`` is set and compared by the
  write store itself, so no process compares its clock with another machine's.
- **Holder's view.** The holder counts its tenure on its own monotonic clock from
  *before* the renewal it sent (:meth:`held_for`), so it stops before any other can
  take over, clocks running at the same rate.
- **Handover.** A rebuild asks for the lease (:meth:`request_handover`); while that
  request is fresh (renewed within the requester's ttl) nobody else takes or
  renews the lease (a holder's write gate then stops its batch), and the holder
  gives it up. A requester that dies lets its
  request expire like a lease.

The holder also mirrors its lease into the read store (``relay_leases``, stamped
with the read store's clock) so that processes that only read there, the API's
``projections`` status and ``/readyz``, can tell whether a relay is alive.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from projections.tables import relay_leases

log = logging.getLogger(__name__)

COLLECTION = "relay_leases"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Document = dict[str, Any]
_row = relay_leases.c


def _now(conn: AsyncConnection) -> sa.ColumnElement[float]:
    """The database's clock in seconds since 1970 (PostgreSQL: not frozen per transaction)."""
    if conn.dialect.name == "postgresql":
        return sa.literal_column("extract(epoch from clock_timestamp())")
    return sa.literal_column("((julianday('now') - 2440587.5) * 86400.0)")


@dataclass(frozen=True, slots=True)
class Tenure:
    """A lease as the write store has it, read at ``now`` (seconds since 1970 by the
    write store's clock, like ``expires_at``)."""

    owner: str | None
    epoch: int
    expires_at: float
    now: float

    @property
    def held(self) -> bool:
        """Whether someone holds it: taken, not released, not expired."""
        return self.owner is not None and self.expires_at > self.now

    @property
    def left(self) -> float:
        """Seconds until it expires unless renewed (0 once it has)."""
        return max(self.expires_at - self.now, 0.0)

    @property
    def expires(self) -> datetime:
        return datetime.fromtimestamp(self.expires_at, UTC)


class Lease:
    def __init__(
        self,
        engine: AsyncEngine,
        db: AsyncDatabase[Document],
        name: str = "relay",
        ttl: float = 10.0,
    ) -> None:
        self.engine = engine
        self.db = db
        self.name = name
        self.ttl = timedelta(seconds=ttl)
        self.owner = str(uuid.uuid4())
        self.epoch: int | None = None
        """The epoch of this process's current (or last) tenure."""
        self._held_until = 0.0  # monotonic; conservative: counted from before the request
        self.clock: Callable[[], float] = time.monotonic  # the holder's own (tests move it)

    @property
    def _seconds(self) -> float:
        return self.ttl.total_seconds()

    async def acquire(self) -> bool:
        """Renews the lease if this tenure still holds it, else takes it if it is free,
        released or expired (a new tenure, a new epoch); whether we hold it now.

        While another's handover request is fresh, nobody else takes or renews the
        lease, and a holder gives it up at once. A holder with more than half its
        lease left only checks for such a request.
        """
        asked_at = self.clock()
        async with self.engine.begin() as conn:
            row = await self._current(conn)
            mine = row.owner == self.owner and row.epoch == self.epoch
            wanted = row.handover_to not in (None, self.owner) and row.handover_until > row.now
            if wanted:
                held = False
                if mine:
                    await self._release(conn)
            elif mine and self.held_for() > self._seconds / 2:
                return True
            elif mine:
                held = await self._renew(conn)
            else:
                held = await self._take(conn, row.epoch)
        # The read store's mirror, after the write store's transaction: see _mirror.
        if held:
            self._held_until = asked_at + self._seconds
            await self._mirror()
        else:
            self._held_until = 0.0
            if wanted and mine:
                await self._mirror_released()
        return held

    async def renew(self) -> bool:
        """Renews this tenure; False (and no new tenure) if it has ended."""
        asked_at = self.clock()
        async with self.engine.begin() as conn:
            held = await self._renew(conn)
        self._held_until = asked_at + self._seconds if held else 0.0
        if held:
            await self._mirror()
        return held

    def held_for(self) -> float:
        """Seconds this process can still be sure it holds the lease (≤ 0: it cannot)."""
        return self._held_until - self.clock()

    async def release(self) -> None:
        """Gives the lease up (keeping its epoch); anyone may take it at once."""
        async with self.engine.begin() as conn:
            await self._release(conn)
        await self._mirror_released()

    async def raise_epoch(self, above: int) -> bool:
        """Moves this tenure's epoch past ``above`` (a checkpoint fenced by an epoch the
        lease no longer remembers, say after the write store was restored)."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                relay_leases.update()
                .where(_row.name == self.name, _row.owner == self.owner, _row.epoch == self.epoch)
                .values(epoch=above + 1)
            )
        if result.rowcount != 1:
            return False
        self.epoch = above + 1
        await self._mirror()
        return True

    async def request_handover(self) -> None:
        """Asks the holder to give the lease to us (call it again within the ttl to keep
        the request fresh while waiting); :meth:`acquire` then gets it."""
        async with self.engine.begin() as conn:
            await self._current(conn)
            await conn.execute(
                relay_leases.update()
                .where(_row.name == self.name)
                .values(handover_to=self.owner, handover_until=_now(conn) + self._seconds)
            )

    async def tenure(self) -> Tenure:
        """The lease as the write store has it now, whoever holds it."""
        async with self.engine.begin() as conn:
            row = await self._current(conn)
        # PostgreSQL's clock comes back as a Decimal.
        return Tenure(row.owner, row.epoch, float(row.expires_at), float(row.now))

    async def _current(self, conn: AsyncConnection) -> Any:
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        await conn.execute(
            insert(relay_leases)
            .values(name=self.name, owner=None, epoch=0, expires_at=0.0, handover_to=None,
                    handover_until=0.0)
            .on_conflict_do_nothing(index_elements=["name"])
        )  # fmt: skip
        query = sa.select(relay_leases, _now(conn).label("now")).where(_row.name == self.name)
        return (await conn.execute(query)).one()

    async def _renew(self, conn: AsyncConnection) -> bool:
        if self.epoch is None:
            return False
        result = await conn.execute(
            relay_leases.update()
            .where(
                _row.name == self.name,
                _row.owner == self.owner,
                _row.epoch == self.epoch,
                sa.not_(self._requested_by_other(conn)),
            )
            .values(expires_at=_now(conn) + self._seconds)
        )
        return bool(result.rowcount == 1)

    def _requested_by_other(self, conn: AsyncConnection) -> sa.ColumnElement[bool]:
        return sa.and_(
            _row.handover_to.is_not(None),
            _row.handover_to != self.owner,
            _row.handover_until > _now(conn),
        )

    async def _take(self, conn: AsyncConnection, seen_epoch: int) -> bool:
        """A new tenure, if the lease is still as seen and free, released or expired."""
        now = _now(conn)
        result = await conn.execute(
            relay_leases.update()
            .where(
                _row.name == self.name,
                _row.epoch == seen_epoch,
                sa.or_(_row.owner.is_(None), _row.expires_at <= now),
                sa.not_(self._requested_by_other(conn)),
            )
            .values(
                owner=self.owner,
                epoch=seen_epoch + 1,
                expires_at=now + self._seconds,
                handover_to=sa.case((_row.handover_to == self.owner, None), else_=_row.handover_to),
            )
        )
        if result.rowcount != 1:
            return False
        self.epoch = seen_epoch + 1
        return True

    async def _release(self, conn: AsyncConnection) -> None:
        self._held_until = 0.0
        if self.epoch is not None:
            await conn.execute(
                relay_leases.update()
                .where(_row.name == self.name, _row.owner == self.owner, _row.epoch == self.epoch)
                .values(owner=None)
            )
        await conn.execute(
            relay_leases.update()
            .where(_row.name == self.name, _row.handover_to == self.owner)
            .values(handover_to=None)
        )

    async def _mirror(self) -> None:
        """Best effort, and never inside a write-store transaction (that would hold its
        lock while the read store answers)."""
        try:
            async with asyncio.timeout(self._seconds / 4):  # the tenure's clock is running
                await self.db[COLLECTION].update_one(
                    {"_id": self.name},
                    {
                        "$set": {"owner": self.owner, "epoch": self.epoch, "ttl": self._seconds},
                        "$currentDate": {"renewedAt": True},
                    },
                    upsert=True,
                )
        except (PyMongoError, TimeoutError):
            log.warning("could not mirror the %s lease into the read store", self.name)

    async def _mirror_released(self) -> None:
        try:
            async with asyncio.timeout(self._seconds / 4):
                await self.db[COLLECTION].update_one(
                    {"_id": self.name, "owner": self.owner}, {"$set": {"owner": None}}
                )
        except (PyMongoError, TimeoutError):
            log.warning("could not mirror the %s lease's release", self.name)


async def store_time(db: AsyncDatabase[Document]) -> datetime:
    """The read store's own clock (what ``$currentDate`` writes)."""
    reply = await db.client.admin.command("hello")
    now: datetime = reply["localTime"]
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)


def _utc(moment: datetime | None) -> datetime:
    if moment is None:
        return EPOCH
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def holder_alive(db: AsyncDatabase[Document], name: str = "relay") -> bool:
    """Whether the read store's mirror shows a holder that renewed within its ttl (by
    the read store's clock); for status and readiness, not for deciding who writes."""
    document = await db[COLLECTION].find_one({"_id": name})
    if document is None or document.get("owner") is None:
        return False
    ttl = timedelta(seconds=document.get("ttl", 0))
    return _utc(document.get("renewedAt")) + ttl > await store_time(db)
