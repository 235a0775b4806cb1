"""Opening the write store: engine settings per dialect and migrating its schema."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from domain import migrations
from domain.migrations import Report, SchemaBehind, SchemaError, SchemaState

SQLITE_BUSY_TIMEOUT_MS = 10_000
# Seconds to open a PostgreSQL connection before the store counts as unreachable, and
# the most a statement may take (a store that hangs, rather than being down, answers
# within this; a COMMIT that times out goes through the commit-outcome check).
CONNECT_TIMEOUT = 1.5
COMMAND_TIMEOUT = 10.0
# Its own advisory lock key (the outbox has another); the same in every process.
SCHEMA_LOCK_KEY = 0x5E0B0D


def create_engine(
    url: str, *, command_timeout: float | None = COMMAND_TIMEOUT, **kwargs: Any
) -> AsyncEngine:
    """An engine for ``url``; on SQLite, WAL with ``synchronous=NORMAL`` and a busy timeout.

    SQLite write transactions start with ``BEGIN IMMEDIATE`` (see :func:`_begin`): a
    deferred transaction that reads and then writes can fail with SQLITE_BUSY
    instead of waiting when another connection wrote in between. On PostgreSQL a
    statement fails after ``command_timeout`` seconds; None (for migrations, which
    may rewrite a big table) lets it take what it needs.
    """
    if sa.make_url(url).drivername == "postgresql+asyncpg":
        # A store that is down answers within seconds, not asyncpg's default minute.
        connect_args = {
            "timeout": CONNECT_TIMEOUT,
            "command_timeout": command_timeout,
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


async def create_schema(engine: AsyncEngine, report: Report | None = None) -> tuple[str, ...]:
    """Migrates the write store to this release's newest revision; returns the revisions run.

    Safe to run at every start and from several processes at once: they take turns
    and the later ones find nothing left to do. On PostgreSQL two processes creating
    the same table at once collide in the catalogue (a duplicate key in ``pg_type``)
    instead of one waiting for the other, so a transaction-scoped advisory lock makes
    them take turns; on SQLite ``BEGIN IMMEDIATE`` does. The revisions run in that one
    transaction: a failing one leaves the store as it was. Raises
    :class:`~domain.migrations.SchemaTooNew` on a store a newer release migrated.

    Servers and ``cqrs-shop migrate`` give it an engine without a statement timeout
    (``create_engine(url, command_timeout=None)``): a revision may take long, and
    a process starting meanwhile waits for it.
    """
    async with engine.connect() as conn:
        await conn.execution_options(write=True)
        if conn.dialect.name == "postgresql":
            async with conn.begin():
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(SCHEMA_LOCK_KEY)))
                return await conn.run_sync(migrations.upgrade, report)
        # SQLite alters a table by copying it, and dropping the original would trip
        # the foreign keys that point at it; they are checked once, before commit.
        await conn.run_sync(_foreign_keys, on=False)
        try:
            async with conn.begin():
                applied = await conn.run_sync(migrations.upgrade, report)
                await conn.run_sync(_check_foreign_keys)
                return applied
        finally:
            await conn.run_sync(_foreign_keys, on=True)


async def schema_state(engine: AsyncEngine) -> SchemaState:
    """Where the write store's schema stands against this release's migrations."""
    async with engine.connect() as conn:
        return await conn.run_sync(migrations.state)


async def check_schema(engine: AsyncEngine) -> None:
    """Raises :class:`~domain.migrations.SchemaBehind` unless the store is at the newest
    revision (and :class:`~domain.migrations.SchemaTooNew` past it)."""
    state = await schema_state(engine)
    if not state.at_head:
        raise SchemaBehind(f"{state.describe()}: run `cqrs-shop migrate`")


def _foreign_keys(conn: sa.Connection, *, on: bool) -> None:
    # Outside any transaction (SQLite ignores the pragma inside one), so not through
    # ``conn.execute``, which would begin one.
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    finally:
        cursor.close()


def _check_foreign_keys(conn: sa.Connection) -> None:
    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise SchemaError(f"a migration left rows whose foreign keys point nowhere: {broken[:5]}")
