"""The policy matrix (tests/e2e/test_policy_matrix.py) over the other ways in, on an
``api`` process (its relay in a process of its own): queries over GET, subscriptions
over the legacy graphql-ws protocol, and queries and mutations over POST there too.

The expected answers are the matrix's: one policy, whatever the transport or role.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.e2e import test_policy_matrix as matrix
from tests.e2e.conftest import Server, bearer, environment
from tests.e2e.test_policy_matrix import (
    CALLERS,
    HIDDEN,
    OK,
    READS,
    Cells,
    World,
    expected,
    no_internal_errors,
    refused_read,
    setup_world,
    substitute,
)


@pytest.fixture(scope="module")
def world(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A relay process and an api process on the same stores; the world set up through
    the api process."""
    directory: Path = tmp_path_factory.mktemp("policy-transports")
    env = environment(mongo_url, directory)
    relay = Server(env, directory / "relay.log", "relay").start()
    try:
        api = Server(env, directory / "api.log", "api").start()
        try:
            yield setup_world(api)
        finally:
            api.stop()
    finally:
        relay.stop()


@pytest.fixture
async def http(world: World) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=world.server.url, timeout=30) as client:
        yield client


# --------------------------------------------------------------------------- POST on an api


async def test_every_query_for_every_caller_on_an_api_process(
    world: World, http: httpx.AsyncClient
) -> None:
    assert world.server.role == "api"
    await matrix.test_every_query_for_every_caller(world, http)


# --------------------------------------------------------------------------- GET


async def get(
    http: httpx.AsyncClient, token: str | None, document: str, variables: dict[str, Any]
) -> dict[str, Any]:
    response = await http.get(
        "/graphql",
        params={"query": document, "variables": json.dumps(variables)},
        headers={**bearer(token), "accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_every_query_for_every_caller_over_get(world: World, http: httpx.AsyncClient) -> None:
    cells = Cells()
    missing = str(uuid.uuid4())
    for name, operation in READS.items():
        field_name = name.split(".")[1]
        variables = operation.variables(world)
        for caller in CALLERS:
            async with cells.cell(name, caller):
                token = world.tokens[caller]
                body = await get(http, token, operation.document, variables)
                outcome = expected(name, caller)
                if outcome == OK:
                    assert "errors" not in body, body
                    assert operation.check(body["data"][field_name], world), body
                elif outcome == HIDDEN:
                    assert body == {"data": {field_name: None}}, body
                    absent = await get(http, token, operation.document,
                                       {**variables, "id": missing})  # fmt: skip
                    assert substitute(body, world.order, missing) == absent, (body, absent)
                else:
                    refused_read(body, name, outcome)
    cells.verify(len(READS) * len(CALLERS))
    no_internal_errors(world.server)


# --------------------------------------------------------------------------- graphql-ws


@asynccontextmanager
async def legacy_subscription(
    server: Server, query: str, variables: dict[str, Any], token: str | None
) -> AsyncIterator[Callable[[], Awaitable[dict[str, Any]]]]:
    """Subscribes over graphql-ws (subscriptions-transport-ws); yields a function that
    returns the next message in graphql-transport-ws's terms (``data`` as ``next``, an
    ``error``'s payload as a list), so the matrix's checks apply as they are."""
    async with connect(server.ws_url, subprotocols=["graphql-ws"], open_timeout=10) as ws:  # type: ignore[list-item]

        async def receive() -> dict[str, Any]:
            while True:
                try:
                    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 15))
                except ConnectionClosed:
                    return {"type": "closed", "code": ws.close_code, "reason": ws.close_reason}
                if message["type"] == "ka":
                    continue
                if message["type"] == "data":
                    message["type"] = "next"
                elif message["type"] == "error" and isinstance(message["payload"], dict):
                    message["payload"] = [message["payload"]]
                return message

        await ws.send(json.dumps({"type": "connection_init", "payload": bearer(token)}))
        acknowledged = await receive()
        assert acknowledged["type"] == "connection_ack", acknowledged
        payload = {"query": query, "variables": variables}
        await ws.send(json.dumps({"id": "1", "type": "start", "payload": payload}))
        yield receive


async def first_legacy_message(
    world: World, operation: matrix.Operation, caller: str, **variables: Any
) -> dict[str, Any]:
    merged = {**operation.variables(world), **variables}
    token = world.tokens[caller]
    async with legacy_subscription(world.server, operation.document, merged, token) as receive:
        return await receive()


async def test_every_subscription_for_every_caller_over_graphql_ws(world: World) -> None:
    await matrix.check_every_subscription(world, first_legacy_message)


# --------------------------------------------------------------------------- mutations
# Last: the commands change what the reads above expect (as in the matrix's own module).


async def test_every_mutation_for_every_caller_on_an_api_process(
    world: World, http: httpx.AsyncClient
) -> None:
    await matrix.test_every_mutation_for_every_caller(world, http)
