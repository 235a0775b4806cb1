"""Write transactions: on PostgreSQL through the async engine, on SQLite in one writer thread.

aiosqlite runs each database call in its own thread and hands every result back
to the event loop: a statement costs three or four thread hops (cursor, execute,
fetch, close), so a two-insert command spends most of its time switching
threads (the P2 benchmark: a fifth of raw aiosqlite). SQLite takes one writer at a
time anyway, so here the whole transaction, the command handlers included, runs
in one dedicated thread on a plain ``sqlite3`` connection, and the event loop
waits for it once.

The handlers stay ``async`` (PostgreSQL needs that): in the writer thread they
run against :class:`SyncBridge`, whose awaits complete at once, and
:func:`run_inline` drives the coroutine to its end without an event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from domain.errors import CommitOutcomeUnknown
from domain.model import outbox
from domain.store import create_sync_engine
from domain.uow import CommitMarker, UnitOfWork

log = logging.getLogger(__name__)

T = TypeVar("T")
Work = Callable[[UnitOfWork], Coroutine[Any, Any, T]]
# How long to keep asking whether a transaction whose COMMIT failed took effect.
COMMIT_CHECK_SECONDS = 10.0


class NotCommitted(Exception):
    """The COMMIT failed and the transaction did not take effect: safe to run again."""


class SyncBridge:
    """The part of ``AsyncConnection`` the domain uses, over a sync ``Connection``."""

    def __init__(self, connection: sa.Connection) -> None:
        self.sync_connection = connection

    @property
    def dialect(self) -> sa.Dialect:
        return self.sync_connection.dialect

    async def execute(self, statement: Any, parameters: Any = None) -> sa.CursorResult[Any]:
        return self.sync_connection.execute(statement, parameters)

    async def scalar(self, statement: Any, parameters: Any = None) -> Any:
        return self.sync_connection.scalar(statement, parameters)

    async def begin_nested(self) -> _SyncSavepoint:
        return _SyncSavepoint(self.sync_connection.begin_nested())

    async def commit(self) -> None:
        self.sync_connection.commit()

    async def rollback(self) -> None:
        self.sync_connection.rollback()


class _SyncSavepoint:
    """The part of ``AsyncTransaction`` a savepoint is used through."""

    def __init__(self, savepoint: sa.NestedTransaction) -> None:
        self.savepoint = savepoint

    async def commit(self) -> None:
        self.savepoint.commit()

    async def rollback(self) -> None:
        self.savepoint.rollback()


def run_inline(coroutine: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine that never suspends (all its awaits complete at once) to its end."""
    try:
        coroutine.send(None)
    except StopIteration as finished:
        return cast(T, finished.value)
    coroutine.close()
    raise RuntimeError("a write transaction waited on something in the writer thread")


# What a transaction left: its result, and if its COMMIT failed, the error and its marker.
_Ran = tuple[T, Exception | None, CommitMarker]


class Transactions:
    """Runs ``work(uow)`` in a write transaction and commits it; rolls back on any error.

    An error before the commit leaves nothing written: it is raised as it is, and the
    work may run again. A COMMIT that fails is another matter (the connection can die
    after the server committed): :meth:`committed` finds out, and the work's result
    is returned if it took effect, :class:`NotCommitted` raised if it did not (safe to
    run again), :class:`CommitOutcomeUnknown` if that cannot be found out.
    """

    def __init__(self, engine: AsyncEngine, clock: Callable[[], datetime]) -> None:
        self.engine = engine
        self.clock = clock
        self._sync_engine: sa.Engine | None = None
        self._thread: ThreadPoolExecutor | None = None
        if engine.dialect.name == "sqlite":
            self._sync_engine = create_sync_engine(engine.url)
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")

    async def run(self, work: Work[T]) -> T:
        if self._thread is None:
            result, failure, marker = await self._run_async(work)
        else:
            loop = asyncio.get_running_loop()
            result, failure, marker = await loop.run_in_executor(
                self._thread, self._run_in_thread, work
            )
        if failure is None:
            return result
        committed = await self.committed(marker)
        if committed:
            log.warning("the COMMIT reported an error but took effect (%r)", failure)
            return result
        if committed is False:
            raise NotCommitted(f"the COMMIT failed and took no effect: {failure!r}") from failure
        raise CommitOutcomeUnknown(
            "the write store failed while committing and whether the command took effect "
            "is unknown: send it again with the same idempotencyKey"
        ) from failure

    async def _run_async(self, work: Work[T]) -> _Ran[T]:
        async with UnitOfWork(self.engine, self.clock) as uow:
            result = await work(uow)
            try:
                await uow.commit()
            except Exception as error:
                return result, error, uow.marker
        return result, None, uow.marker

    def _run_in_thread(self, work: Work[T]) -> _Ran[T]:
        assert self._sync_engine is not None
        connection = self._sync_engine.connect()
        committing = False
        try:
            connection.execution_options(write=True)
            connection.begin()
            bridge = cast(AsyncConnection, SyncBridge(connection))
            uow = UnitOfWork.bound(bridge, self.clock)
            result = run_inline(work(uow))
            committing = True
            try:
                run_inline(uow.commit())
            except Exception as error:
                return result, error, uow.marker
            return result, None, uow.marker
        finally:
            _close(connection, quietly=committing)

    async def committed(self, marker: CommitMarker) -> bool | None:
        """Whether the transaction behind ``marker`` took effect, after its COMMIT failed;
        ``None`` when that cannot be found out within :data:`COMMIT_CHECK_SECONDS`.

        One that appended no events counts as not committed: all it can have kept are
        idempotency records, and running it again answers the same from them.
        """
        if marker.xid is None and marker.event_id is None:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + COMMIT_CHECK_SECONDS
        delay = 0.01
        while True:
            try:
                # Bounded: a hung connection (a partition) must not stall every command
                # queued behind this one.
                async with asyncio.timeout(max(deadline - loop.time(), 0.01)):
                    status = await self._commit_status(marker)
            except Exception:
                log.warning(
                    "cannot ask the write store whether a commit took effect", exc_info=True
                )
                status = "unreachable"
            if status in ("committed", "aborted"):
                return status == "committed"
            if status is None or loop.time() > deadline:
                return None
            await asyncio.sleep(delay)  # in progress, or the store unreachable for now
            delay = min(2 * delay, 0.5)

    async def _commit_status(self, marker: CommitMarker) -> str | None:
        """``committed``, ``aborted``, ``in progress``, or ``None`` if the store cannot tell."""
        async with self.engine.connect() as conn:
            if marker.xid is not None:
                status = await conn.scalar(sa.select(sa.func.txid_status(marker.xid)))
                return None if status is None else str(status)
            found = await conn.scalar(
                sa.select(sa.literal(1)).where(outbox.c.event_id == marker.event_id)
            )
            return "committed" if found else "aborted"

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        if self._sync_engine is not None:
            self._sync_engine.dispose()


def _close(connection: sa.Connection, *, quietly: bool) -> None:
    """Closes ``connection``, rolling back whatever is open. Once a COMMIT was sent its
    outcome is what matters: an error here is then only logged."""
    try:
        connection.close()
    except Exception:
        if not quietly:
            raise
        log.warning("closing the write connection failed after COMMIT", exc_info=True)
