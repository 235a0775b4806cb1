"""The write model's migrations, on SQLite and PostgreSQL: they build exactly what
``domain/model.py`` declares, adopt a database made before them with its rows, run
once, and refuse a store that a newer release migrated."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from app.bootstrap import bootstrap
from app.settings import Settings
from domain import migrations
from domain.bus import CommandBus
from domain.commands import (
    AddressData,
    CreateProduct,
    OrderLineRequest,
    PlaceOrder,
    RegisterCustomer,
)
from domain.migrations import BASELINE, SchemaBehind, SchemaError, SchemaTooNew
from domain.model import order_lines, products
from domain.store import check_schema, create_engine, create_schema, schema_state
from projections.tables import WRITE_STORE
from tests.conftest import fresh_database
from tests.e2e import forkserver

ROOT = Path(__file__).parents[2]


@pytest.fixture
def database_url(empty_database_url: str) -> str:
    """These tests migrate stores themselves: each starts from an empty one."""
    return empty_database_url


@contextlib.asynccontextmanager
async def store(url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def another_database(url: str) -> AsyncIterator[str]:
    """A second empty database beside ``url``'s, on the same server."""
    if url.startswith("sqlite"):
        yield url.replace(".db", "-other.db")
        return
    async with fresh_database(url.rsplit("/", 1)[0]) as other:
        yield other


# Every table of the write store, by name: the write model's and the relay's.
TABLES = {name: table for schema in WRITE_STORE for name, table in schema.tables.items()}


def create_all(conn: sa.Connection) -> None:
    """What ``metadata.create_all`` made at every start before there were migrations."""
    for schema in WRITE_STORE:
        schema.create_all(conn)


async def differences(engine: AsyncEngine) -> list[Any]:
    """What ``alembic revision --autogenerate`` would write: the model against the store."""

    def compare(conn: sa.Connection) -> list[Any]:
        options = migrations.context_options(conn.dialect.name, WRITE_STORE)
        context = MigrationContext.configure(conn, opts=options)
        return list(compare_metadata(context, options["target_metadata"]))

    async with engine.connect() as conn:
        return await conn.run_sync(compare)


PG_CATALOGUE = {
    "columns": "SELECT table_name, column_name, data_type, character_maximum_length, "
    "is_nullable, column_default FROM information_schema.columns "
    "WHERE table_schema = 'public'",
    "constraints": "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
    "FROM pg_constraint WHERE connamespace = 'public'::regnamespace",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
    "sequences": "SELECT sequencename, data_type FROM pg_sequences WHERE schemaname = 'public'",
}


async def catalogue(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    """The schema as the database itself describes it (names, check constraints,
    AUTOINCREMENT and all), leaving out the order of columns and ``alembic_version``."""
    async with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            found = {
                part: (await conn.exec_driver_sql(query)).all()
                for part, query in PG_CATALOGUE.items()
            }
        else:
            rows = (await conn.exec_driver_sql("SELECT name, sql FROM sqlite_master")).all()
            found = {"objects": [(name, _clauses(sql)) for name, sql in rows if sql]}
    return {
        part: sorted(row for row in rows if "alembic_version" not in str(row[0]))
        for part, rows in found.items()
    }


def _clauses(sql: str) -> tuple[str, ...]:
    """A CREATE statement's column and constraint clauses, in no particular order."""
    head, _, body = sql.partition("(")
    clauses, depth, current = [], 0, ""
    for char in body.rstrip().removesuffix(")"):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            clauses.append(current)
            current = ""
        else:
            current += char
    clauses.append(current)
    return (" ".join(head.split()), *sorted(re.sub(r"\s+", " ", c).strip() for c in clauses))


async def test_migrations_build_exactly_what_the_model_declares(database_url: str) -> None:
    """Fails when domain/model.py changes without a migration (or the other way round)."""
    async with store(database_url) as engine:
        everything = (await schema_state(engine)).pending
        assert everything[0] == BASELINE
        assert await create_schema(engine) == everything
        assert await differences(engine) == []
        assert (await schema_state(engine)).at_head


async def test_the_migrated_schema_is_the_one_create_all_makes(database_url: str) -> None:
    async with (
        store(database_url) as migrated,
        another_database(database_url) as url,
        store(url) as created,
    ):
        await create_schema(migrated)
        async with created.begin() as conn:
            await conn.run_sync(create_all)
        assert await catalogue(migrated) == await catalogue(created)


# Tables of revisions after the baseline, newest first (they hold foreign keys to older ones).
ADDED_SINCE_BASELINE = ("wishlist_items", "wishlists")


async def made_before_migrations(engine: AsyncEngine, *, missing: tuple[str, ...] = ()) -> None:
    """A data directory of a release that ran ``metadata.create_all`` at start.

    That was the model at revision 0001 less the tables later revisions add; once a
    later revision changes a table that existed then, build this from revision 0001
    instead (upgrade to it, then drop ``alembic_version``).
    """
    assert migrations.head() == "0002", "see made_before_migrations' docstring"
    async with engine.begin() as conn:
        await conn.run_sync(create_all)
        for table in (*ADDED_SINCE_BASELINE, *missing):
            await conn.execute(sa.schema.DropTable(TABLES[table]))


async def test_a_database_made_before_migrations_is_adopted_with_its_rows(
    database_url: str,
) -> None:
    async with store(database_url) as engine:
        # An older release made neither of these tables yet.
        await made_before_migrations(engine, missing=("relay_leases", "relay_progress"))
        bus = CommandBus(engine)
        try:
            await bus.execute(CreateProduct("MUG-1", "Mug", "kitchen", 1299, "", 5))
            assert (await schema_state(engine)).legacy
            said: list[str] = []

            assert await create_schema(engine, report=said.append) == (BASELINE, "0002")

            assert any("adopting its tables" in line for line in said), said
            assert await differences(engine) == []
            assert (await schema_state(engine)).at_head
            async with engine.connect() as conn:
                assert await conn.scalar(sa.select(products.c.sku)) == "MUG-1"
            created = await bus.execute(CreateProduct("CUP-1", "Cup", "kitchen", 899, "", 5))
            assert created.version == 2  # the outbox carries on from the old rows
        finally:
            bus.close()


async def test_migrating_twice_changes_nothing(database_url: str) -> None:
    async with store(database_url) as engine:
        await create_schema(engine)
        said: list[str] = []
        assert await create_schema(engine, report=said.append) == ()
        assert said == []
        async with engine.connect() as conn:
            versions = (await conn.exec_driver_sql("SELECT * FROM alembic_version")).all()
        assert versions == [(migrations.head(),)]


async def test_processes_starting_together_migrate_once(database_url: str) -> None:
    async with store(database_url) as first, store(database_url) as second:
        everything = (await schema_state(first)).pending
        runs = await asyncio.gather(create_schema(first), create_schema(second))
    assert sorted(runs) == [(), everything]


async def test_a_store_a_newer_release_migrated_is_refused(database_url: str) -> None:
    async with store(database_url) as engine:
        await create_schema(engine)
        async with engine.begin() as conn:
            await conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0999'")
        for attempt in (create_schema, check_schema):
            with pytest.raises(SchemaTooNew, match=r"revision 0999, which this release does not"):
                await attempt(engine)


async def test_a_store_behind_is_refused_when_told_not_to_migrate(database_url: str) -> None:
    async with store(database_url) as engine:
        with pytest.raises(SchemaBehind, match=r"is empty; .* run `cqrs-shop migrate`"):
            await check_schema(engine)
        await create_schema(engine)
        await check_schema(engine)


def with_revisions(root: Path, *extra: str) -> ScriptDirectory:
    """This release's revisions plus ``extra`` ones (sources of later revisions)."""
    shutil.copytree(migrations.HERE / "versions", root / "versions")
    for number, source in enumerate(extra, start=int(migrations.head()) + 1):
        (root / "versions" / f"{number:04}_extra.py").write_text(
            f'"""extra revision {number}"""\n\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
            f'revision = "{number:04}"\ndown_revision = "{number - 1:04}"\n\n\n'
            f"def upgrade() -> None:\n    {source}\n"
        )
    return ScriptDirectory(str(root))


async def some_order(engine: AsyncEngine) -> None:
    """A product, a customer and an order line that points at both."""
    bus = CommandBus(engine)
    try:
        mug = await bus.execute(CreateProduct("MUG-1", "Mug", "kitchen", 1299, "", 5))
        home = AddressData("1 Main Street", "Berlin", "10115", "DE")
        ada = await bus.execute(RegisterCustomer("ada@example.com", "Ada", home))
        assert mug.id is not None
        assert ada.id is not None
        await bus.execute(PlaceOrder(ada.id, (OrderLineRequest(mug.id, 1),)))
    finally:
        bus.close()


async def test_a_later_revision_runs_and_copies_a_referenced_table_with_its_rows(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite changing a column's type copies the table; ``order_lines`` points at
    ``products``, so dropping the original must not trip its foreign keys."""
    async with store(database_url) as engine:
        await create_schema(engine)
        await some_order(engine)
        later = with_revisions(
            tmp_path / "later",
            'with op.batch_alter_table("products") as table:\n'
            '        table.alter_column("sku", type_=sa.String(80))',
        )
        now, then = migrations.head(), f"{int(migrations.head()) + 1:04}"
        monkeypatch.setattr(migrations, "scripts", lambda: later)
        said: list[str] = []

        assert await create_schema(engine, report=said.append) == (then,)

        assert said == [
            f"the write store is at revision {now}; this release needs revision {then}: "
            f"running {then}",
            f"ran {then}: extra revision {int(then)}",
        ]
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("SELECT sku FROM products")).all() == [("MUG-1",)]
            assert await conn.scalar(sa.select(sa.func.count()).select_from(order_lines)) == 1
        monkeypatch.undo()
        with pytest.raises(SchemaTooNew, match=f"revision {then}, which this release"):
            await create_schema(engine)


async def test_a_revision_that_breaks_foreign_keys_changes_nothing(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with store(database_url) as engine:
        await create_schema(engine)
        await some_order(engine)
        breaking = with_revisions(tmp_path / "breaking", 'op.execute("DELETE FROM products")')
        now = migrations.head()
        monkeypatch.setattr(migrations, "scripts", lambda: breaking)

        # SQLite checks the foreign keys just before commit, PostgreSQL at once.
        sqlite = engine.dialect.name == "sqlite"
        with pytest.raises(SchemaError if sqlite else sa.exc.IntegrityError):
            await create_schema(engine)

        assert (await schema_state(engine)).current == now
        async with engine.connect() as conn:
            assert await conn.scalar(sa.select(sa.func.count()).select_from(products)) == 1


def test_the_migrate_command_says_what_ran_and_checks(tmp_path: Path) -> None:
    env = {**os.environ, "SHOP_DATA_DIR": str(tmp_path / "var"), "DATABASE_URL": ""}

    def migrate(*args: str) -> subprocess.CompletedProcess[str]:
        return forkserver.run(["migrate", *args], env, timeout=60)

    behind = migrate("--check")
    assert behind.returncode == 1
    assert "the write store is empty" in behind.stderr
    assert "run `cqrs-shop migrate`" in behind.stderr

    first = migrate()
    assert first.returncode == 0, first.stderr
    assert f"ran {BASELINE}: The write model as create_all made it" in first.stdout
    assert f"the write store is at revision {migrations.head()}, the newest" in first.stdout

    again = migrate()
    assert (again.returncode, again.stdout.splitlines()[0]) == (0, "nothing to run")
    assert migrate("--check").returncode == 0


async def test_a_server_told_not_to_migrate_refuses_a_store_behind(tmp_path: Path) -> None:
    settings = Settings(
        shop_data_dir=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'write.db'}",
        mongodb_url="mongodb://127.0.0.1:9/never-reached",
        shop_auth_secret="s" * 32,
        shop_migrate_on_start=False,
    )
    with pytest.raises(SchemaBehind, match="run `cqrs-shop migrate`"):
        async with bootstrap(settings):
            pass
