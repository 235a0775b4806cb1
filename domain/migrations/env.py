"""Alembic's command line (``alembic revision --autogenerate``, ``alembic history``):
the write store is ``-x url=…`` or ``$DATABASE_URL``.

The server and ``cqrs-shop migrate`` do not come through here: they run
:func:`domain.migrations.upgrade` under the schema lock (``domain.store``).
"""

from __future__ import annotations

import asyncio
import os

import sqlalchemy as sa
from alembic import context

from domain.migrations import context_options
from domain.store import create_engine


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("which write store? set DATABASE_URL or pass -x url=URL")
    return url


def _run(connection: sa.Connection) -> None:
    context.configure(connection=connection, **context_options(connection.dialect.name))
    with context.begin_transaction():
        context.run_migrations()


async def _run_online(url: str) -> None:
    engine = create_engine(url, command_timeout=None)
    try:
        async with engine.connect() as connection:
            await connection.execution_options(write=True)
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    url = _url()
    dialect = sa.make_url(url).get_dialect().name
    context.configure(url=url, literal_binds=True, **context_options(dialect))
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online(_url()))
