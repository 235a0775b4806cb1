"""How the server tells its read store apart, and which FerretDB workarounds each gets."""

from __future__ import annotations

import os

import pytest

from app.bootstrap import connect_read_store


async def test_ferretdb_on_sqlite_gets_version_guards_decided_by_the_relay(mongo_url: str) -> None:
    if os.environ.get("MONGODB_URL"):
        pytest.skip("the session's read store is MongoDB")
    store = await connect_read_store(mongo_url, database="kind_probe")
    try:
        assert (store.is_ferretdb, store.backend) == (True, "sqlite")
        assert store.relay_options["check_versions"] is True
        assert store.relay_options["write_chunk"] == 16
    finally:
        await store.client.close()


async def test_ferretdb_on_postgresql_keeps_the_guards_in_the_filter(
    ferretdb_on_postgres: str,
) -> None:
    store = await connect_read_store(ferretdb_on_postgres, database="kind_probe")
    try:
        assert (store.is_ferretdb, store.backend) == (True, "postgresql")
        assert store.relay_options["check_versions"] is False
    finally:
        await store.client.close()
