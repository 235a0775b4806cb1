"""The unit of work: one write transaction holding state rows, outbox events and idempotency."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypeVar, cast

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction

from domain import outbox, repositories
from domain.repositories import Repository, Stock

log = logging.getLogger(__name__)
R = TypeVar("R", bound=Repository[Any])


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class CommitMarker:
    """What tells, after a failed COMMIT, whether the transaction took effect: its id on
    PostgreSQL, its first event's id on SQLite; neither when it appended no events."""

    xid: int | None = None
    event_id: str | None = None


class UnitOfWork:
    """``async with uow:`` opens a write transaction that rolls back unless committed.

    Several commands can run one after another in one transaction (group commit):
    :meth:`next_command` gives each fresh repositories and its own clock reading, and
    :meth:`end_command` ends it. A command's :meth:`flush` saves every aggregate that
    raised events; their events wait in :attr:`events` until :meth:`append_events`
    appends those of the whole transaction to the outbox, in one statement, just
    before the commit. Until then the transaction takes no outbox lock, so it never
    waits for a row while holding it.

    A command refused after it changed rows must leave nothing behind while the others
    of its transaction go on: its writes run inside a savepoint, opened before its
    first write that a refusal can still follow, and rolled back by
    ``end_command(refused=True)``. Commands that write once, at their flush, need none
    (a version conflict there is an UPDATE that changed no row), so most commands
    pay no savepoint.
    """

    conn: AsyncConnection
    stock: Stock

    def __init__(self, engine: AsyncEngine, clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.clock = clock
        self.metadata: dict[str, Any] = {}

    async def __aenter__(self) -> Self:
        self.conn = await self.engine.connect()
        try:
            await self.conn.execution_options(write=True)
            await self.conn.begin()
        except BaseException:
            await self.conn.close()
            raise
        self._start()
        return self

    @classmethod
    def bound(cls, conn: AsyncConnection, clock: Callable[[], datetime] = utcnow) -> UnitOfWork:
        """A unit of work on a connection whose transaction its caller opens and ends."""
        uow = cls.__new__(cls)
        uow.clock, uow.metadata, uow.conn = clock, {}, conn
        uow._start()
        return uow

    def _start(self) -> None:
        self._committed = False
        self.commit_failed = False
        self.events: list[dict[str, Any]] = []
        self.marker = CommitMarker()
        self.next_command()

    def next_command(self, metadata: dict[str, Any] | None = None) -> None:
        """Starts the next command in this transaction: empty identity maps, a new ``now``."""
        self.now = self.clock()
        self.metadata = dict(metadata or {})
        self.repositories: tuple[Repository[Any], ...] = tuple(
            cls(self.conn) for cls in repositories.registered()
        )
        """One of each registered repository, in the foreign keys' order."""
        self._by_class = {type(r): r for r in self.repositories}
        self.stock = Stock(self.conn, self.before_write)
        self._savepoint: AsyncTransaction | None = None
        self._events_before = len(self.events)

    async def before_write(self) -> None:
        """Opens the current command's savepoint, unless it has one."""
        if self._savepoint is None:
            self._savepoint = await self.conn.begin_nested()

    def __getitem__(self, cls: type[R]) -> R:
        """The current command's repository of class ``cls``: ``uow[ProductRepository]``."""
        return cast(R, self._by_class[cls])

    async def flush(self) -> int | None:
        """Saves the command's changed aggregates and keeps their events for the outbox;
        the index in :attr:`events` of its last event, or ``None`` if it raised none."""
        changed = [
            (repository, aggregate)
            for repository in self.repositories
            for aggregate in repository.seen.values()
            if aggregate.events
        ]
        if len(changed) > 1:  # a conflict saving the second would leave the first saved
            await self.before_write()
        pending = []
        for repository, aggregate in changed:
            await repository.save(aggregate)
            pending.extend(aggregate.events)
            aggregate.events.clear()
        self.events.extend(outbox.rows(pending, now=self.now, metadata=self.metadata))
        return len(self.events) - 1 if pending else None

    async def end_command(self, *, refused: bool) -> None:
        """Ends the current command: a refused one keeps nothing it wrote or raised."""
        if refused:
            del self.events[self._events_before :]
        if self._savepoint is not None:
            savepoint, self._savepoint = self._savepoint, None
            await (savepoint.rollback() if refused else savepoint.commit())

    async def append_events(self, *, read_head: bool) -> tuple[list[int], int | None]:
        """Appends the transaction's events to the outbox under its lock: their positions,
        and with ``read_head`` the last position before them (taken under the lock)."""
        head = None
        if self.events:
            self.marker = CommitMarker(await outbox.lock(self.conn), self.events[0]["event_id"])
        if read_head:
            head = await outbox.head(self.conn)
        return await outbox.insert(self.conn, self.events), head

    async def commit(self) -> None:
        try:
            await self.conn.commit()
        except BaseException:
            self.commit_failed = True
            raise
        self._committed = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if not self._committed:
                await self._after_commit(self.conn.rollback(), "rolling back")
        finally:
            await self._after_commit(self.conn.close(), "closing the connection")

    async def _after_commit(self, step: Awaitable[None], doing: str) -> None:
        """Runs ``step``; once a COMMIT was sent, its error is only logged: what the
        commit did is what matters, and raising here would hide it."""
        try:
            await step
        except Exception:
            if not (self._committed or self.commit_failed):
                raise
            log.warning("%s failed after COMMIT", doing, exc_info=True)
