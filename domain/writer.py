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
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from domain.store import create_sync_engine
from domain.uow import UnitOfWork

T = TypeVar("T")
Work = Callable[[UnitOfWork], Coroutine[Any, Any, T]]


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

    async def commit(self) -> None:
        self.sync_connection.commit()

    async def rollback(self) -> None:
        self.sync_connection.rollback()


def run_inline(coroutine: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine that never suspends (all its awaits complete at once) to its end."""
    try:
        coroutine.send(None)
    except StopIteration as finished:
        return cast(T, finished.value)
    coroutine.close()
    raise RuntimeError("a write transaction waited on something in the writer thread")


class Transactions:
    """Runs ``work(uow)`` in a write transaction and commits it; rolls back on any error."""

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
            async with UnitOfWork(self.engine, self.clock) as uow:
                result = await work(uow)
                await uow.commit()
            return result
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._run_in_thread, work)

    def _run_in_thread(self, work: Work[T]) -> T:
        assert self._sync_engine is not None
        with self._sync_engine.connect() as connection:
            connection.execution_options(write=True)
            connection.begin()
            bridge = cast(AsyncConnection, SyncBridge(connection))
            uow = UnitOfWork.bound(bridge, self.clock)
            result = run_inline(work(uow))
            connection.commit()
        return result

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        if self._sync_engine is not None:
            self._sync_engine.dispose()
