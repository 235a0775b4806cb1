"""Alembic's command line (``alembic revision --autogenerate``, ``alembic history``):
the write store is ``-x url=…`` or ``$DATABASE_URL``.

The server and ``cqrs-shop migrate`` do not come through here: they run
:func:`domain.migrations.upgrade` under the schema lock (``domain.store``).

The schema to compare the store with is ``target_metadata`` in ``[tool.alembic]``
(``module:name``): the write store holds the relay's tables too, declared above this
package (``projections.tables``), so the configuration names them, not an import here.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context

from domain.migrations import context_options
from domain.store import create_engine


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("which write store? set DATABASE_URL or pass -x url=URL")
    return url


def _target() -> Sequence[sa.MetaData]:
    where = context.config.get_alembic_option("target_metadata")
    if not isinstance(where, str) or ":" not in where:
        raise SystemExit("[tool.alembic] target_metadata must name the schema as module:name")
    module, name = where.split(":", 1)
    target: Sequence[sa.MetaData] = getattr(importlib.import_module(module), name)
    return target


def _run(connection: sa.Connection) -> None:
    context.configure(connection=connection, **context_options(connection.dialect.name, _target()))
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
    context.configure(url=url, literal_binds=True, **context_options(dialect, _target()))
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online(_url()))
