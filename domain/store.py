"""Opening the write store: engine settings per dialect and idempotent schema creation."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from domain.model import metadata

SQLITE_BUSY_TIMEOUT_MS = 10_000
# Seconds to open a PostgreSQL connection before the store counts as unreachable, and
# the most a statement may take (a store that hangs, rather than being down, answers
# within this; a COMMIT that times out goes through the commit-outcome check).
CONNECT_TIMEOUT = 1.5
COMMAND_TIMEOUT = 10.0
# Its own advisory lock key (the outbox has another); the same in every process.
SCHEMA_LOCK_KEY = 0x5E0B0D


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An engine for ``url``; on SQLite, WAL with ``synchronous=NORMAL`` and a busy timeout.

    SQLite write transactions start with ``BEGIN IMMEDIATE`` (see :func:`_begin`): a
    deferred transaction that reads and then writes can fail with SQLITE_BUSY
    instead of waiting when another connection wrote in between.
    """
    if sa.make_url(url).drivername == "postgresql+asyncpg":
        # A store that is down answers within seconds, not asyncpg's default minute.
        connect_args = {
            "timeout": CONNECT_TIMEOUT,
            "command_timeout": COMMAND_TIMEOUT,
            **kwargs.pop("connect_args", {}),
        }
        kwargs["connect_args"] = connect_args
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine.sync_engine, "connect", _configure_sqlite)
        sa.event.listen(engine.sync_engine, "begin", _begin)
    return engine


def create_sync_engine(url: sa.URL | str) -> sa.Engine:
    """A plain ``sqlite3`` engine on the same file and settings, for the writer thread
    (see ``domain.writer``)."""
    sync_url = sa.make_url(url).set(drivername="sqlite")
    engine = sa.create_engine(sync_url, connect_args={"check_same_thread": False})
    sa.event.listen(engine, "connect", _configure_sqlite)
    sa.event.listen(engine, "begin", _begin)
    return engine


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event, not the driver, open transactions.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in (
        "journal_mode=WAL",
        "synchronous=NORMAL",
        f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
        "foreign_keys=ON",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _begin(conn: sa.Connection) -> None:
    mode = "IMMEDIATE" if conn.get_execution_options().get("write", False) else "DEFERRED"
    conn.exec_driver_sql(f"BEGIN {mode}")


async def create_schema(engine: AsyncEngine) -> None:
    """Creates the missing tables; safe to run at every start and from several processes.

    On PostgreSQL two processes creating the same table at once collide in the
    catalogue (a duplicate key in ``pg_type``) instead of one waiting for the other,
    so a transaction-scoped advisory lock makes them take turns; the second then
    finds the tables there. SQLite's ``BEGIN IMMEDIATE`` serialises them already.
    """
    async with engine.connect() as conn:
        await conn.execution_options(write=True)
        async with conn.begin():
            if conn.dialect.name == "postgresql":
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(SCHEMA_LOCK_KEY)))
            await conn.run_sync(metadata.create_all, checkfirst=True)
