"""Signals between processes, through the write store every process already shares.

Two things must cross process boundaries at once, without anyone polling per request:

- **Commits wake relays.** A command committed in an ``api`` process must wake the
  relay in another.
- **Progress reaches readers.** When the relay has applied a batch, every process
  serving reads must learn each projection's new position (``minVersion`` waits) and
  the keys of the documents that changed (subscriptions wake only for those).

The relay appends one row per batch to ``relay_progress`` in the write store (the
*progress feed*): ``{"epoch", "advances": {projection: [position, keys | null]},
"resync"}``, after the batch's documents and checkpoints are in the read store. A
reader applies the rows it has not seen, in id order (:class:`ProgressFeed`).

What wakes a process to look (:class:`WriteStoreSignals`):

- **PostgreSQL**: ``LISTEN``/``NOTIFY``. A transaction that appends to the outbox
  sends ``NOTIFY shop_outbox`` in the round trip that takes the outbox lock
  (``domain.outbox.lock``); a progress row is inserted with ``NOTIFY shop_progress``.
  PostgreSQL delivers both at commit, never before, so a woken process finds the
  rows. Each process holds one listening connection, reconnected with back-off;
  after a reconnect both are signalled, since notifications were lost meanwhile.
- **SQLite** (processes sharing one file, on one machine): no notifications exist,
  so one loop per process reads ``PRAGMA data_version``, which changes when any
  other connection commits (a read of shared memory, no I/O), and signals both:
  every 5 ms while commits come, slowing to every 50 ms after 0.2 s without one
  (an idle server spent 7.5 % of a core with 5 ms polls, 4 % with these).

Nothing here depends on the read store, so the same feed works with FerretDB (which
has no tailable cursors that wait) and with MongoDB.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from domain.outbox import OUTBOX_CHANNEL
from projections.tables import relay_progress

log = logging.getLogger(__name__)

PROGRESS_CHANNEL = "shop_progress"
# An admin asked the relays to retry their failing projections now (resumeProjection).
RESUME_CHANNEL = "shop_resume"
# A batch changing more documents than this in one projection publishes "any may have
# changed" for it: its subscribers all look again, and the row stays small.
MAX_KEYS = 5000
# The feed keeps at least this many rows; a reader further behind resynchronises.
KEEP_ROWS = 10_000
PRUNE_EVERY = 500
FEED_PAGE = 1000
SQLITE_INTERVAL = 0.005
SQLITE_IDLE_INTERVAL = 0.05
SQLITE_IDLE_AFTER = 0.2
MAX_BACKOFF = 5.0
_row = relay_progress.c


@dataclass(frozen=True, slots=True)
class Advance:
    """A projection has applied everything up to ``position``; ``keys``: the ids of the
    documents that changed (None: any may have)."""

    projection: str
    position: int
    keys: frozenset[Any] | None


@dataclass(frozen=True, slots=True)
class FeedRow:
    id: int
    epoch: int
    advances: tuple[Advance, ...]
    resync: bool
    """The publisher lost earlier rows (it could not write them): any document may have
    changed."""


def _portable(keys: frozenset[Any] | None) -> list[Any] | None:
    """Keys that survive JSON as themselves (strings, integers), else None (any)."""
    if keys is None or len(keys) > MAX_KEYS:
        return None
    if all(isinstance(k, str) or (isinstance(k, int) and not isinstance(k, bool)) for k in keys):
        return sorted(keys, key=lambda k: (isinstance(k, str), k))
    return None


class ProgressFeed:
    """The ``relay_progress`` table: the relay publishes, readers read after an id."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._published = 0
        self._lost = False

    async def publish(self, epoch: int | None, advances: Iterable[Advance]) -> None:
        """Appends one row (and, on PostgreSQL, notifies). Never raises: a row that could
        not be written makes the next one say ``resync``."""
        body = {
            "epoch": epoch or 0,
            "advances": {a.projection: [a.position, _portable(a.keys)] for a in advances},
            "resync": self._lost,
        }
        if not body["advances"]:
            return
        try:
            async with self.engine.begin() as conn:
                row_id = int(
                    (
                        await conn.execute(relay_progress.insert().values(body=body))
                    ).inserted_primary_key[0]  # type: ignore[index]
                )
                if conn.dialect.name == "postgresql":
                    await conn.execute(sa.select(sa.func.pg_notify(PROGRESS_CHANNEL, str(row_id))))
                self._published += 1
                if self._published % PRUNE_EVERY == 0:
                    await conn.execute(relay_progress.delete().where(_row.id <= row_id - KEEP_ROWS))
        except Exception:  # the write store is down, say: readers resynchronise later
            log.warning("could not publish the relay's progress", exc_info=True)
            self._lost = True
            return
        self._lost = False

    async def last_id(self) -> int:
        async with self.engine.connect() as conn:
            return await _last_id(conn)

    async def read_after(self, last_id: int, limit: int = FEED_PAGE) -> list[FeedRow]:
        async with self.engine.connect() as conn:
            result = await conn.execute(
                sa.select(_row.id, _row.body)
                .where(_row.id > last_id)
                .order_by(_row.id)
                .limit(limit)
            )
            return [_feed_row(int(row_id), body) for row_id, body in result.all()]


async def _last_id(conn: AsyncConnection) -> int:
    value = await conn.scalar(sa.select(sa.func.coalesce(sa.func.max(_row.id), 0)))
    return int(value or 0)


def _feed_row(row_id: int, body: Any) -> FeedRow:
    if isinstance(body, str):
        body = json.loads(body)
    advances = tuple(
        Advance(name, int(position), None if keys is None else frozenset(keys))
        for name, (position, keys) in dict(body.get("advances", {})).items()
    )
    return FeedRow(row_id, int(body.get("epoch", 0)), advances, bool(body.get("resync")))


class WriteStoreSignals:
    """Calls ``on_outbox()`` when some process may have appended to the outbox, and
    ``on_progress()`` when a relay may have published progress (see the module's doc).

    Both may be called when nothing happened (after a reconnect, or on SQLite for any
    commit); never skip one that did, except while the write store is unreachable,
    after which both are called.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        on_outbox: Callable[[], None],
        on_progress: Callable[[], None],
        *,
        on_resume: Callable[[], None] | None = None,
        sqlite_interval: float = SQLITE_INTERVAL,
        sqlite_idle_interval: float = SQLITE_IDLE_INTERVAL,
    ) -> None:
        self.engine = engine
        self.on_outbox = on_outbox
        self.on_progress = on_progress
        self.on_resume = on_resume
        self.sqlite_interval = sqlite_interval
        self.sqlite_idle_interval = max(sqlite_idle_interval, sqlite_interval)
        self.connected = asyncio.Event()
        """Set while signals arrive (for tests and readiness)."""

    def _both(self) -> None:
        self.on_outbox()
        self.on_progress()

    async def run(self) -> None:
        if self.engine.dialect.name == "postgresql":
            await self._listen()
        elif self.engine.dialect.name == "sqlite":
            await self._watch_sqlite()

    async def _listen(self) -> None:
        import asyncpg  # only with PostgreSQL

        dsn = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        callbacks: dict[str, Callable[[], None]] = {
            OUTBOX_CHANNEL: self.on_outbox,
            PROGRESS_CHANNEL: self.on_progress,
        }
        if self.on_resume is not None:
            callbacks[RESUME_CHANNEL] = self.on_resume
        backoff = 0.1
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(dsn, timeout=5)
            except (OSError, asyncpg.PostgresError, TimeoutError) as error:
                log.warning("cannot listen to the write store (%r); again in %.1fs", error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            try:
                conn.add_termination_listener(_notified(lost.set))
                for channel, callback in callbacks.items():
                    await conn.add_listener(channel, _notified(callback))
                backoff = 0.1
                self.connected.set()
                self._both()  # whatever was committed while nobody listened
                await lost.wait()
                log.warning("lost the write store's notifications; reconnecting")
            except Exception as error:  # whatever it was, listen again on a new connection
                log.warning("listening to the write store failed (%r)", error)
            finally:
                self.connected.clear()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 1.0)
            self._both()

    async def _watch_sqlite(self) -> None:
        database = self.engine.url.database
        if not database or database == ":memory:":
            return
        connection = sqlite3.connect(database, check_same_thread=False)
        loop = asyncio.get_running_loop()
        try:
            version = connection.execute("PRAGMA data_version").fetchone()[0]
            self.connected.set()
            changed = loop.time()
            while True:
                idle = loop.time() - changed > SQLITE_IDLE_AFTER
                await asyncio.sleep(self.sqlite_idle_interval if idle else self.sqlite_interval)
                try:
                    current = connection.execute("PRAGMA data_version").fetchone()[0]
                except sqlite3.Error:
                    log.warning("watching the write store failed", exc_info=True)
                    continue
                if current != version:
                    version, changed = current, loop.time()
                    self._both()
        finally:
            self.connected.clear()
            connection.close()


async def request_resume(engine: AsyncEngine) -> None:
    """Asks the relay processes listening on PostgreSQL to retry failing projections now.
    On SQLite the relays share no such channel: the caller's own relay is told directly,
    and others retry within their back-off (at most ``relay.MAX_BACKOFF``)."""
    if engine.dialect.name != "postgresql":
        return
    async with engine.begin() as conn:
        await conn.execute(sa.select(sa.func.pg_notify(RESUME_CHANNEL, "")))


def _notified(callback: Callable[[], None]) -> Callable[..., None]:
    def listener(*_: Any) -> None:
        callback()

    return listener
