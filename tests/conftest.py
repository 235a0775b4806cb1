"""Real stores for the whole suite: one FerretDB per session (or MONGODB_URL), SQLite files."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from sqlalchemy.ext.asyncio import AsyncEngine

from app.ferretdb import EmbeddedFerretDB, ensure_binary
from app.settings import Settings
from domain.bus import CommandBus
from domain.store import create_engine, create_schema


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MongoDB-compatible server: MONGODB_URL if set, else the embedded FerretDB."""
    if url := os.environ.get("MONGODB_URL"):
        yield url
        return
    binary = ensure_binary(Settings().cache_dir)
    ferretdb = EmbeddedFerretDB(binary, tmp_path_factory.mktemp("ferretdb"))
    try:
        yield ferretdb.start()
    finally:
        ferretdb.stop()


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


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'write.db'}"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    await create_schema(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def bus(engine: AsyncEngine) -> CommandBus:
    return CommandBus(engine)


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
