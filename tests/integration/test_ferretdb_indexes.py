"""The embedded FerretDB's _id lookups, indexed by the expression FerretDB queries with."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from app.ferretdb import ID_INDEX_SUFFIX, index_document_ids


def query_plan(path: Path, collection: str) -> str:
    """How SQLite runs the lookup by _id that FerretDB sends for ``collection``."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        (table,) = connection.execute(
            "SELECT table_name FROM _ferretdb_collections WHERE name = ?", (collection,)
        ).fetchone()
        rows = connection.execute(
            f'EXPLAIN QUERY PLAN SELECT _ferretdb_sjson FROM "{table}" '
            "WHERE _ferretdb_sjson->'$._id' = ?",
            ('"d7"',),
        ).fetchall()
    return " ".join(str(row[-1]) for row in rows)


async def test_id_lookups_use_the_index_and_ferretdb_works_as_before(
    ferretdb_dir: Path | None, db: AsyncDatabase[Any]
) -> None:
    if ferretdb_dir is None:
        pytest.skip("MongoDB indexes _id itself")
    await db.things.insert_many([{"_id": f"d{i}", "n": i, "version": 1} for i in range(50)])
    path = ferretdb_dir / f"{db.name}.sqlite"
    assert "SCAN" in query_plan(path, "things")

    assert await asyncio.to_thread(index_document_ids, ferretdb_dir) >= 1
    assert await asyncio.to_thread(index_document_ids, ferretdb_dir) == 0
    assert ID_INDEX_SUFFIX in query_plan(path, "things")

    await db.things.update_one({"_id": "d7", "version": {"$lt": 2}}, {"$inc": {"n": 1}})
    await db.things.update_one({"_id": "d7"}, {"$set": {"version": 2}})
    assert await db.things.find_one({"_id": "d7"}) == {"_id": "d7", "n": 8, "version": 2}
    await db.things.rename("renamed")
    assert ID_INDEX_SUFFIX in query_plan(path, "renamed")
    assert await db.renamed.count_documents({}) == 50
    await db.drop_collection("renamed")
    assert await db.list_collection_names() == []
