"""The admin mutations: rebuildProjections starts the CLI's blue-green rebuild and answers
at once; resumeProjection retries a STALLED projection now. Both admin only."""

from __future__ import annotations

from typing import Any

import httpx
from pymongo import AsyncMongoClient

from projections.registry import projection_names
from tests.conftest import eventually
from tests.e2e.conftest import Client, Server, customer_token
from tests.e2e.test_products_api import PRODUCT, RESTOCK, create

REBUILD = """mutation($names: [String!]) {
  rebuildProjections(names: $names) { success errors { code message field } } }"""
RESUME = """mutation($name: String!) {
  resumeProjection(name: $name) { success errors { code message field } } }"""
STATES = "{ projections { name state lastError } }"


async def test_only_an_admin_may_rebuild_or_resume(start_server: Any) -> None:
    server: Server = start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        # Refused like every command: in the answer's errors, nothing started.
        for token, code in ((None, "UNAUTHENTICATED"), (customer_token("c-1"), "FORBIDDEN")):
            caller = Client(http, token)
            rebuild = (await caller.data(REBUILD, {"names": ["products"]}))["rebuildProjections"]
            assert [e["code"] for e in rebuild["errors"]] == [code], rebuild
            resume = (await caller.data(RESUME, {"name": "products"}))["resumeProjection"]
            assert [e["code"] for e in resume["errors"]] == [code], resume
        states = (await Client(http).data(STATES))["projections"]
        assert "REBUILDING" not in {s["state"] for s in states}


async def test_a_rebuild_started_over_graphql_swaps_in_fresh_collections(
    start_server: Any, server_env: dict[str, str], mongo_url: str
) -> None:
    server: Server = start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        client = Client(http)
        made = await create(client)
        unknown = (await client.data(REBUILD, {"names": ["products", "nope"]}))[
            "rebuildProjections"
        ]
        assert unknown["success"] is False
        assert [(e["code"], e["field"]) for e in unknown["errors"]] == [
            ("VALIDATION_FAILED", "names.1")
        ]
        started = (await client.data(REBUILD, {"names": ["products"]}))["rebuildProjections"]
        assert started == {"success": True, "errors": []}, started
        # One rebuild at a time: it holds its lease until it has dropped what it replaced.
        again = (await client.data(REBUILD, {"names": None}))["rebuildProjections"]
        assert [e["code"] for e in again["errors"]] == ["INVALID_STATE"], again

        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
        try:
            db = mongo[server_env["MONGODB_DATABASE"]]

            async def swapped() -> bool:
                checkpoint = await db["projection_checkpoints"].find_one({"_id": "products"})
                served = (checkpoint or {}).get("collections", {})
                return any("__g" in name for name in served.values())

            await eventually(swapped, within=30)
        finally:
            await mongo.close()
        # Still answering, from the rebuilt collection, and writes go on.
        restocked = (await client.data(RESTOCK, {"id": made["id"], "quantity": 2}))[
            "restockProduct"
        ]
        read = await client.data(PRODUCT, {"id": made["id"], "v": restocked["version"]})
        assert read["product"]["stockOnHand"] == 7, read


async def test_resume_answers_invalid_state_unless_stalled(start_server: Any) -> None:
    server: Server = start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        client = Client(http)
        await create(client)
        states = (await client.data(STATES))["projections"]
        assert {s["state"] for s in states} <= {"RUNNING", "CATCHING_UP"}, states
        answer = (await client.data(RESUME, {"name": "products"}))["resumeProjection"]
        assert [e["code"] for e in answer["errors"]] == ["INVALID_STATE"], answer
        assert "not STALLED" in answer["errors"][0]["message"]
        unknown = (await client.data(RESUME, {"name": "nope"}))["resumeProjection"]
        assert [(e["code"], e["field"]) for e in unknown["errors"]] == [
            ("VALIDATION_FAILED", "name")
        ]
        assert set(projection_names()) == {s["name"] for s in states}


async def test_a_stalled_projection_resumes_when_asked_once_its_fault_is_mended(
    start_server: Any, server_env: dict[str, str], mongo_url: str
) -> None:
    """An operator's story: a document broken by hand stalls the products projection
    (its next $inc fails); once mended, resumeProjection makes the relay go on."""
    server: Server = start_server()
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    try:
        db = mongo[server_env["MONGODB_DATABASE"]]
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            client = Client(http)
            made = await create(client)
            await client.data(PRODUCT, {"id": made["id"], "v": made["version"]})
            await db["products"].update_one({"_id": made["id"]}, {"$set": {"stockOnHand": "x"}})
            restocked = (await client.data(RESTOCK, {"id": made["id"], "quantity": 2}))[
                "restockProduct"
            ]

            async def products_state() -> str:
                states = (await client.data(STATES))["projections"]
                return next(s["state"] for s in states if s["name"] == "products")

            async def stalled() -> bool:
                return await products_state() == "STALLED"

            await eventually(stalled, within=15)
            await db["products"].update_one({"_id": made["id"]}, {"$set": {"stockOnHand": 5}})
            answer = (await client.data(RESUME, {"name": "products"}))["resumeProjection"]
            assert answer == {"success": True, "errors": []}, answer
            read = await client.data(PRODUCT, {"id": made["id"], "v": restocked["version"]})
            assert read["product"]["stockOnHand"] == 7, read

            async def running() -> bool:
                return await products_state() == "RUNNING"

            await eventually(running, within=15)
    finally:
        await mongo.close()
