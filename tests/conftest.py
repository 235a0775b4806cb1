"""Real stores for the whole suite: one FerretDB per session (or MONGODB_URL), SQLite files."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.ferretdb import EmbeddedFerretDB, ensure_binary
from app.settings import Settings
from bench.postgres import Postgres, create_database, drop_database
from domain.bus import CommandBus
from domain.store import create_engine, create_schema
from projections.relay import Relay


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """End-to-end files first, then integration, then unit: with the files shared out
    over workers (``make test``), the long ones start early and the short ones fill the
    end, so no worker is left running one long file alone. Within a file, the order
    stays as written.

    Relay tests run each way of applying version guards (``guard_mode``) on SQLite and
    the FerretDB way on PostgreSQL as well, not every pair: the write store and the
    guard are apart (the outbox is read the same way whatever the read store does, the
    guard the same way whatever the write store is), and the production pair is FerretDB
    beside PostgreSQL."""
    rank = {"e2e": 0, "integration": 1, "unit": 2}
    dropped = [item for item in items if _guard_in_filter_on_postgresql(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    kept = [item for item in items if not _guard_in_filter_on_postgresql(item)]
    items[:] = sorted(kept, key=lambda item: rank.get(item.path.parent.name, 3))


def _guard_in_filter_on_postgresql(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return False
    params = callspec.params
    in_filter = (
        params.get("guard_mode") == "guard-in-filter" or params.get("check_versions") is False
    )
    return in_filter and "postgresql" in (params.get("database_url"), params.get("write_store"))


# Helpers whose asserts should explain themselves like a test's do.
pytest.register_assert_rewrite("tests.e2e.consistency")


@pytest.fixture(scope="session")
def ferretdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """The embedded FerretDB's data directory; None when MONGODB_URL names the server."""
    return None if os.environ.get("MONGODB_URL") else tmp_path_factory.mktemp("ferretdb")


@pytest.fixture(scope="session")
def mongo_url(ferretdb_dir: Path | None) -> Iterator[str]:
    """A real MongoDB-compatible server: MONGODB_URL if set, else the embedded FerretDB."""
    if ferretdb_dir is None:
        yield os.environ["MONGODB_URL"]
        return
    binary = ensure_binary(Settings().cache_dir)
    ferretdb = EmbeddedFerretDB(binary, ferretdb_dir)
    try:
        yield ferretdb.start()
    finally:
        ferretdb.stop()


@pytest.fixture(scope="session")
def ferretdb_pg(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedFerretDB]:
    """FerretDB on its PostgreSQL backend: the production-like read store.

    One instance for all processes: FerretDB 1.24 caches each database's collection
    list per process and never reloads it, so a second instance on the same PostgreSQL
    database does not see collections the first creates (a rebuild's, say).
    """
    name = f"ferretdb_{uuid.uuid4().hex[:8]}"
    asyncio.run(create_database(postgres_url, name))
    target = postgres_url.replace("postgresql+asyncpg://", "postgres://") + f"/{name}"
    instance = EmbeddedFerretDB(
        ensure_binary(Settings().cache_dir), tmp_path_factory.mktemp("ferretdb-pg"),
        postgresql_url=target,
    )  # fmt: skip
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="session")
def ferretdb_on_postgres(ferretdb_pg: EmbeddedFerretDB) -> str:
    return ferretdb_pg.url


@pytest.fixture
async def mongo(mongo_url: str) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def db(mongo: AsyncMongoClient[dict[str, Any]]) -> AsyncIterator[AsyncDatabase[Any]]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    try:
        yield mongo[name]
    finally:
        await mongo.drop_database(name)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL for the session: TEST_POSTGRES_URL, or a throwaway cluster on loopback."""
    if url := os.environ.get("TEST_POSTGRES_URL"):
        yield url
        return
    cluster = Postgres()
    cluster.start()
    try:
        yield cluster.url
    finally:
        cluster.remove()


TEMPLATE = "shop_template"


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite write store migrated once, for tests to copy: migrating takes longer
    than the tests that start from a migrated store."""
    path = tmp_path_factory.mktemp("template") / "write.db"
    _run_apart(_migrate(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(scope="session")
def migrated_postgres(postgres_url: str) -> str:
    """The PostgreSQL server with a migrated database named ``TEMPLATE``, which
    :func:`fresh_database` copies (``CREATE DATABASE … TEMPLATE``)."""
    _run_apart(create_database(postgres_url, TEMPLATE))
    _run_apart(_migrate(f"{postgres_url}/{TEMPLATE}"))
    return postgres_url


def _run_apart(work: Coroutine[Any, Any, None]) -> None:
    """Runs ``work`` on an event loop of its own: these fixtures are set up from async
    fixtures too, inside a running loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, work).result()


async def _migrate(url: str) -> None:
    engine = create_engine(url)
    try:
        await create_schema(engine)
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each write-side test runs on SQLite and on PostgreSQL: a fresh, migrated write
    store each time."""
    if request.param == "sqlite":
        path = tmp_path / "write.db"
        shutil.copyfile(request.getfixturevalue("migrated_sqlite"), path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    databases: MigratedDatabases = request.getfixturevalue("migrated_databases")
    url = await databases.take()
    try:
        yield url
    finally:
        await databases.give_back(url)


class MigratedDatabases:
    """Migrated PostgreSQL databases for one test each, emptied and used again.

    Copying the template takes a few tenths of a second, emptying every table a few
    hundredths. A database handed back is emptied (``TRUNCATE … RESTART IDENTITY``, so
    outbox positions start at 1 again) unless something still holds one of its tables
    (a task the test left running), in which case it is dropped instead.
    """

    def __init__(self, server: str) -> None:
        self.server = server
        self.idle: list[str] = []

    async def take(self) -> str:
        if self.idle:
            return self.idle.pop()
        name = f"t_{uuid.uuid4().hex[:12]}"
        await create_database(self.server, name, TEMPLATE)
        return f"{self.server}/{name}"

    async def give_back(self, url: str) -> None:
        engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                if await conn.scalar(sa.text(OTHER_SESSIONS)):
                    raise InUse
                await conn.exec_driver_sql("SET lock_timeout = '2s'")
                tables = (await conn.exec_driver_sql(EVERY_TABLE)).scalars().all()
                await conn.exec_driver_sql(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
            self.idle.append(url)
        except (DBAPIError, InUse):
            await drop_database(self.server, url.rsplit("/", 1)[1])
        finally:
            await engine.dispose()


class InUse(Exception):
    """Another session is still connected to a database handed back."""


OTHER_SESSIONS = """SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()"""
EVERY_TABLE = """SELECT quote_ident(tablename) FROM pg_tables
WHERE schemaname = 'public' AND tablename <> 'alembic_version'"""


@pytest.fixture(scope="session")
def migrated_databases(migrated_postgres: str) -> MigratedDatabases:
    return MigratedDatabases(migrated_postgres)


@pytest.fixture(params=["sqlite", "postgresql"])
async def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh write store that nothing has migrated, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'write.db'}"
        return
    async with fresh_database(request.getfixturevalue("postgres_url")) as url:
        yield url


@contextlib.asynccontextmanager
async def fresh_database(server: str, template: str | None = None) -> AsyncIterator[str]:
    """A new PostgreSQL database on ``server`` for the block, empty or a copy of
    ``template``; dropped after it."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    await create_database(server, name, template)
    yield f"{server}/{name}"
    await drop_database(server, name)


@contextlib.contextmanager
def fresh_database_apart(server: str, template: str | None = None) -> Iterator[str]:
    """:func:`fresh_database` for synchronous fixtures (a module's, say)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    _run_apart(create_database(server, name, template))
    try:
        yield f"{server}/{name}"
    finally:
        _run_apart(drop_database(server, name))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def bus(engine: AsyncEngine) -> Iterator[CommandBus]:
    bus = CommandBus(engine)
    yield bus
    bus.close()


async def eventually(
    check: Callable[[], Awaitable[Any]], within: float = 10.0, interval: float = 0.02
) -> Any:
    """Waits until ``check()`` returns something truthy; fails after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within}s (last: {result!r})")
        await asyncio.sleep(interval)


@pytest.fixture(params=["guard-in-filter", "guard-in-relay"])
def guard_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Runs a relay test with both ways of applying version guards (see Relay.check_versions):
    in the update's filter (the way for MongoDB) and decided by the relay (the way for
    FerretDB). Both run here on the read store the tests have: FerretDB unless
    MONGODB_URL names a real MongoDB. With ``database_url``, the filter's way runs on
    SQLite only (see ``pytest_collection_modifyitems``)."""
    check = request.param == "guard-in-relay"
    defaults = dict(Relay.__init__.__kwdefaults__ or {})
    monkeypatch.setattr(Relay.__init__, "__kwdefaults__", {**defaults, "check_versions": check})
    return check
