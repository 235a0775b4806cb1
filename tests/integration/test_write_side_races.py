"""Several server processes on one PostgreSQL: two command buses on two engines, racing.

Each "process" is a CommandBus with its own engine (its own connection pool), as two
`api` processes would have; they share nothing but the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import create_async_engine

from domain.store import create_engine, create_schema


@contextlib.asynccontextmanager
async def fresh_database(server: str) -> AsyncIterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f"CREATE DATABASE {name}")
        yield f"{server}/{name}"
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.dispose()


async def test_two_processes_create_the_schema_at_once_on_a_fresh_database(
    postgres_url: str,
) -> None:
    for _ in range(5):
        async with fresh_database(postgres_url) as url:
            engines = [create_engine(url) for _ in range(2)]
            try:
                await asyncio.gather(*(create_schema(engine) for engine in engines))
            finally:
                for engine in engines:
                    await engine.dispose()
