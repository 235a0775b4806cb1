"""``minVersion`` at its edges, on one server for the module: a bad ``X-Min-Version``
header, and subscriptions asked for a version the projection has not reached yet."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.e2e.conftest import Client, Server, admin_token, bearer, module_server, subscription

# Long enough for the subscription that waits and then delivers (a few writes), short
# enough for the one that never gets its version.
CONSISTENCY_TIMEOUT = 3.0
CREATE = """mutation($sku: String!) {
  createProduct(input: {sku: $sku, name: "Mug", category: "c", priceCents: 100,
                        initialStock: 5}) { success id version } }"""
RESTOCK = """mutation($id: ID!) { restockProduct(id: $id, quantity: 1) { success version } }"""
PRODUCT_UPDATED = """subscription($id: ID!, $v: Version) {
  productUpdated(id: $id, minVersion: $v) { id stockOnHand version } }"""
PROTOCOLS = ["graphql-transport-ws", "graphql-ws"]


@pytest.fixture(scope="module")
def server(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with module_server(
        tmp_path_factory, mongo_url, "min-version-edges",
        SHOP_CONSISTENCY_TIMEOUT=str(CONSISTENCY_TIMEOUT),
    ) as server:  # fmt: skip
        yield server


@pytest.fixture
async def client(server: Server) -> Any:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        yield Client(http)


async def write(client: Client, document: str, variables: dict[str, Any]) -> dict[str, Any]:
    [result] = (await client.data(document, variables)).values()
    assert result["success"], result
    return dict(result)


async def new_product(client: Client) -> dict[str, Any]:
    return await write(client, CREATE, {"sku": f"M-{uuid.uuid4().hex[:8]}"})


# --------------------------------------------------------------------------- X-Min-Version


@pytest.mark.parametrize("header", ["abc", "1.5", "-1", "0x10", "1_000", "+5", str(2**63)])
async def test_a_bad_min_version_header_fails_each_field_it_applies_to_with_bad_user_input(
    client: Client, header: str
) -> None:
    """Fields without their own minVersion fail with a clear, coded error naming the
    header; a field that passes its own argument is not judged by the header."""
    created = await new_product(client)
    body = await client.post(
        """query($id: ID!, $sku: String!, $v: Version) {
             byHeader: product(id: $id) { id }
             bySku: productBySku(sku: $sku) { id }
             ownArgument: product(id: $id, minVersion: $v) { id } }""",
        {"id": created["id"], "sku": "NONE", "v": created["version"]},
        **{"X-Min-Version": header},
    )
    assert body["data"] == {
        "byHeader": None, "bySku": None, "ownArgument": {"id": created["id"]}
    }, body  # fmt: skip
    errors = {tuple(e["path"]): e for e in body["errors"]}
    assert set(errors) == {("byHeader",), ("bySku",)}, body
    for error in errors.values():
        assert error["extensions"]["code"] == "BAD_USER_INPUT", error
        assert "X-Min-Version" in error["message"], error


async def test_an_empty_min_version_header_asks_for_no_version(client: Client) -> None:
    created = await new_product(client)
    query = "query($id: ID!) { product(id: $id) { id } }"
    body = await client.post(query, {"id": created["id"]}, **{"X-Min-Version": ""})
    assert "errors" not in body, body


# --------------------------------------------------------------------------- subscriptions


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_subscription_waits_for_its_min_version_then_delivers_the_document_at_it(
    server: Server, client: Client, protocol: str
) -> None:
    """Subscribed two writes ahead: nothing is sent after the first write (the document
    is not yet at the asked version), and the first message after the second holds it."""
    created = await new_product(client)
    wanted = created["version"] + 2
    variables = {"id": created["id"], "v": wanted}
    async with subscription(server, PRODUCT_UPDATED, variables, protocol) as next_payload:
        first = asyncio.ensure_future(next_payload())
        one = await write(client, RESTOCK, {"id": created["id"]})
        assert one["version"] == wanted - 1, "another write interleaved"
        # The first write applied (a read at its version answers), yet nothing was sent.
        await client.data(
            "query($id: ID!, $v: Version) { product(id: $id, minVersion: $v) { id } }",
            {"id": created["id"], "v": one["version"]},
        )
        done, _ = await asyncio.wait({first}, timeout=0.3)
        assert not done, f"sent before minVersion {wanted} was reached: {first.result()}"
        two = await write(client, RESTOCK, {"id": created["id"]})
        assert two["version"] == wanted
        message = await asyncio.wait_for(first, CONSISTENCY_TIMEOUT + 5)
    assert "errors" not in message, message
    document = message["data"]["productUpdated"]
    assert document["version"] >= wanted, document
    assert document["stockOnHand"] == 7, document


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_subscription_whose_min_version_is_never_reached_ends_not_yet_consistent(
    server: Server, client: Client, protocol: str
) -> None:
    created = await new_product(client)
    far = created["version"] + 10**9
    payload = {"query": PRODUCT_UPDATED, "variables": {"id": created["id"], "v": far}}
    async with connect(server.ws_url, subprotocols=[protocol], open_timeout=10) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": bearer(admin_token())}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        start = "subscribe" if protocol == "graphql-transport-ws" else "start"
        await ws.send(json.dumps({"id": "1", "type": start, "payload": payload}))
        messages = []
        while not messages or messages[-1]["type"] not in ("complete", "error"):
            message = json.loads(await asyncio.wait_for(ws.recv(), CONSISTENCY_TIMEOUT + 10))
            if message["type"] != "ka":
                messages.append(message)
    # One result with the error and no data, then the end of the subscription.
    answer, end = messages
    result = "next" if protocol == "graphql-transport-ws" else "data"
    assert (answer["type"], end["type"]) == (result, "complete"), messages
    assert answer["payload"]["data"] is None, messages
    [error] = answer["payload"]["errors"]
    assert error["path"] == ["productUpdated"], error
    assert error["extensions"] == {
        "code": "NOT_YET_CONSISTENT",
        "minVersion": far,
        "currentVersion": error["extensions"]["currentVersion"],
        "projection": "products",
    }, error
    assert created["version"] <= error["extensions"]["currentVersion"] < far, error
