"""The product slice of the contract, black-box over HTTP and WebSocket against real servers.

The module's tests share their servers (see ``server``): each makes products of its own
(unique SKUs and categories) and counts versions from where it started.
"""

from __future__ import annotations

import signal
from typing import Any

import httpx
import pytest

from projections.registry import projection_names
from tests.e2e.conftest import Client, Server, subscription, unique

CREATE = """
mutation($input: CreateProductInput!, $key: String) {
  createProduct(input: $input, idempotencyKey: $key) {
    success id version aggregateVersion errors { code message field }
  }
}"""
RESTOCK = """
mutation($id: ID!, $quantity: Int!) {
  restockProduct(id: $id, quantity: $quantity) { success version errors { code field } }
}"""
PRODUCT = """
query($id: ID!, $v: Version) {
  product(id: $id, minVersion: $v) {
    id sku name priceCents stockOnHand stockAvailable status version
  }
}"""
PRODUCT_UPDATED = """
subscription($id: ID!, $v: Version) {
  productUpdated(id: $id, minVersion: $v) { id stockOnHand version }
}"""


def mug(sku: str | None = None, **overrides: Any) -> dict[str, Any]:
    """A product's input; its SKU unique unless given."""
    return {"sku": sku or unique("mug"), "name": "Blue Mug", "category": "kitchen",
            "priceCents": 1299, "initialStock": 5, **overrides}  # fmt: skip


async def create(client: Client, **fields: Any) -> dict[str, Any]:
    """Creates a product; its answer, with the ``sku`` it was created with."""
    product = mug(**fields)
    result: dict[str, Any] = (await client.data(CREATE, {"input": product}))["createProduct"]
    assert result["success"], result
    return {**result, "sku": product["sku"]}


IN_CATEGORY = """query($c: String!, $v: Version) {
  products(filter: {category: $c}, minVersion: $v) { totalCount edges { node { id } } } }"""


async def test_a_write_is_readable_at_its_version_at_once(client: Client) -> None:
    category = unique("kitchen")
    created = await create(client, category=category)
    product = await client.data(PRODUCT, {"id": created["id"], "v": created["version"]})
    assert product["product"] == {
        "id": created["id"],
        "sku": created["sku"].upper(),
        "name": "Blue Mug",
        "priceCents": 1299,
        "stockOnHand": 5,
        "stockAvailable": 5,
        "status": "ACTIVE",
        "version": created["version"],
    }
    listed = await client.data(IN_CATEGORY, {"c": category, "v": created["version"]})
    assert listed["products"] == {"totalCount": 1, "edges": [{"node": {"id": created["id"]}}]}
    # totalCount is counted only when selected, found through fragments too
    through_fragments = await client.data(
        "query($c: String!, $v: Version) { products(filter: {category: $c}, minVersion: $v) "
        '{ ...Counted } orderHistory(customerId: "nobody") '
        "{ ... on OrderConnection { totalCount } } } "
        "fragment Counted on ProductConnection { pageInfo { hasNextPage } totalCount }",
        {"c": category, "v": created["version"]},
    )
    assert through_fragments["products"]["totalCount"] == 1
    assert through_fragments["orderHistory"] == {"totalCount": 0}


async def test_the_min_version_header_applies_to_every_field(client: Client) -> None:
    category = unique("kitchen")
    created = await create(client, category=category)
    body = await client.post(
        "query($sku: String!, $c: String!) { productBySku(sku: $sku) { id } "
        "products(filter: {category: $c}) { totalCount } }",
        {"sku": created["sku"], "c": category},
        **{"X-Min-Version": str(created["version"])},
    )
    assert body["data"]["productBySku"]["id"] == created["id"]
    assert body["data"]["products"]["totalCount"] == 1


async def test_a_version_never_reached_answers_not_yet_consistent(start_server: Any) -> None:
    server: Server = start_server(SHOP_CONSISTENCY_TIMEOUT="0.2")
    async with httpx.AsyncClient(base_url=server.url) as http:
        body = await Client(http).post(PRODUCT, {"id": "any", "v": 10**12})
    [error] = body["errors"]
    assert error["path"] == ["product"]
    assert error["locations"] == [{"line": 3, "column": 3}]
    assert error["extensions"] == {
        "code": "NOT_YET_CONSISTENT",
        "minVersion": 10**12,
        "currentVersion": 0,
        "projection": "products",
    }


async def test_repeating_a_mutation_with_its_key_returns_the_first_result(client: Client) -> None:
    key = unique("create-mug")
    variables = {"input": mug(), "key": key}
    first = (await client.data(CREATE, variables))["createProduct"]
    again = (await client.data(CREATE, variables))["createProduct"]
    assert again == first
    reused = await client.data(CREATE, {"input": mug(), "key": key})
    [error] = reused["createProduct"]["errors"]
    assert (error["code"], error["field"]) == ("IDEMPOTENCY_KEY_REUSED", "idempotencyKey")
    second = await create(client)
    assert second["version"] == first["version"] + 1  # the repeats wrote nothing


async def test_invalid_input_reports_every_problem_and_writes_nothing(client: Client) -> None:
    before = await create(client)
    refused = await client.data(CREATE, {"input": mug(sku="no spaces", name="", priceCents=-1)})
    result = refused["createProduct"]
    assert result["success"] is False
    assert (result["id"], result["version"]) == (None, None)
    assert {(e["code"], e["field"]) for e in result["errors"]} == {
        ("VALIDATION_FAILED", "sku"),
        ("VALIDATION_FAILED", "name"),
        ("VALIDATION_FAILED", "priceCents"),
    }
    created = await create(client)
    assert created["version"] == before["version"] + 1  # the refused one wrote nothing


async def test_contract_error_codes_over_http(client: Client) -> None:
    created = await create(client)
    duplicate = (await client.data(CREATE, {"input": mug(created["sku"].upper())}))["createProduct"]
    assert [(e["code"], e["field"]) for e in duplicate["errors"]] == [("DUPLICATE", "sku")]
    conflict = await client.data(
        "mutation($id: ID!) { changeProductPrice(id: $id, priceCents: 5, expectedVersion: 9) "
        "{ success errors { code field } } }",
        {"id": created["id"]},
    )
    assert conflict["changeProductPrice"]["errors"] == [
        {"code": "VERSION_CONFLICT", "field": "expectedVersion"}
    ]
    missing = await client.data(RESTOCK, {"id": "no-such-id", "quantity": 1})
    assert missing["restockProduct"]["errors"] == [{"code": "NOT_FOUND", "field": "id"}]
    await client.data("mutation($id: ID!) { discontinueProduct(id: $id) { success } }",
                      {"id": created["id"]})  # fmt: skip
    discontinued = await client.data(RESTOCK, {"id": created["id"], "quantity": 1})
    assert discontinued["restockProduct"]["errors"] == [{"code": "INVALID_STATE", "field": None}]


async def test_bad_list_arguments_get_a_coded_graphql_error(client: Client) -> None:
    for query in ("{ products(first: 1000) { totalCount } }",
                  '{ products(after: "garbage") { totalCount } }'):  # fmt: skip
        body = await client.post(query)
        assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_subscription_sends_the_product_then_each_change(
    server: Server, client: Client
) -> None:
    created = await create(client)
    variables = {"id": created["id"], "v": created["version"]}
    async with subscription(server, PRODUCT_UPDATED, variables) as next_payload:
        first = await next_payload()
        assert first["data"]["productUpdated"] == {
            "id": created["id"], "stockOnHand": 5, "version": created["version"]
        }  # fmt: skip
        restocked = await client.data(RESTOCK, {"id": created["id"], "quantity": 3})
        second = await next_payload()
        assert second["data"]["productUpdated"] == {
            "id": created["id"],
            "stockOnHand": 8,
            "version": restocked["restockProduct"]["version"],
        }


async def test_subscription_over_the_legacy_graphql_ws_protocol(
    server: Server, client: Client
) -> None:
    created = await create(client)
    variables = {"id": created["id"], "v": created["version"]}
    async with subscription(server, PRODUCT_UPDATED, variables, "graphql-ws") as next_payload:
        assert (await next_payload())["data"]["productUpdated"]["stockOnHand"] == 5
        await client.data(RESTOCK, {"id": created["id"], "quantity": 1})
        assert (await next_payload())["data"]["productUpdated"]["stockOnHand"] == 6


async def test_a_restart_on_the_same_data_keeps_data_and_idempotency(start_server: Any) -> None:
    first_server: Server = start_server()
    variables = {"input": mug("mug-1"), "key": "survives-restarts"}
    async with httpx.AsyncClient(base_url=first_server.url) as http:
        created = (await Client(http).data(CREATE, variables))["createProduct"]
    # uvicorn shuts down gracefully, then re-raises SIGTERM as its exit status.
    assert first_server.stop() in (0, -signal.SIGTERM)
    assert "Traceback" not in first_server.log.read_text()

    second_server: Server = start_server()
    async with httpx.AsyncClient(base_url=second_server.url) as http:
        client = Client(http)
        assert (await client.data(CREATE, variables))["createProduct"] == created
        product = await client.data(PRODUCT, {"id": created["id"], "v": created["version"]})
    assert product["product"]["sku"] == "MUG-1"


async def test_api_and_relay_in_separate_processes(start_server: Any) -> None:
    """Woken, not polled: the relay polls only every 60 s and the api waits 2 s for a
    version, so each round needs the commit to wake the relay and the relay's progress
    to reach the api (through the shared SQLite file here; see projections.signals)."""
    start_server("relay", SHOP_RELAY_POLL_INTERVAL="60")
    api: Server = start_server("api", SHOP_CONSISTENCY_TIMEOUT="2")
    async with httpx.AsyncClient(base_url=api.url) as http:
        client = Client(http)
        created = await create(client)
        product = await client.data(PRODUCT, {"id": created["id"], "v": created["version"]})
        assert product["product"]["id"] == created["id"]
        async with subscription(api, PRODUCT_UPDATED, {"id": created["id"]}) as next_payload:
            assert (await next_payload())["data"]["productUpdated"]["stockOnHand"] == 5
            for n in range(1, 6):
                restocked = await client.data(RESTOCK, {"id": created["id"], "quantity": 1})
                version = restocked["restockProduct"]["version"]
                product = await client.data(PRODUCT, {"id": created["id"], "v": version})
                assert product["product"]["stockOnHand"] == 5 + n
                assert (await next_payload())["data"]["productUpdated"]["stockOnHand"] == 5 + n


async def test_probes_graphiql_and_projection_status(
    server: Server, client: Client, request: pytest.FixtureRequest
) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.json()["checks"] == {"writeStore": True, "readStore": True, "relay": True}
        page = await http.get("/graphql", headers={"accept": "text/html"})
        assert "graphiql" in page.text.lower()
    relays = [server] if server.role == "all" else request.getfixturevalue("module_cluster").relays
    async with httpx.AsyncClient() as http:
        running = [
            "shop_relay_running 1.0" in (await http.get(f"{relay.url}/metrics")).text
            for relay in relays
        ]
    assert running.count(True) == 1, running
    created = await create(client)
    at = created["version"]  # the last write: every projection reaches it
    every_read_model_at_it = """query($v: Version) {
      product(id: "x", minVersion: $v) { id }
      dashboard(minVersion: $v) { version }
      auditTrail(aggregateId: "x", minVersion: $v) { pageInfo { hasNextPage } }
      customer(id: "x", minVersion: $v) { id }
      order(id: "x", minVersion: $v) { id }
      topProducts(minVersion: $v) { sku }
      wishlist(customerId: "x", minVersion: $v) { itemCount }
      orderHistory(customerId: "x", minVersion: $v) { totalCount }
    }"""
    await client.data(every_read_model_at_it, {"v": at})
    async with httpx.AsyncClient(base_url=server.url) as http:
        scraped = (await http.get("/metrics")).text
    assert all(f'shop_projection_checkpoint{{projection="{n}"}} {at}.0' in scraped
               for n in projection_names()), scraped  # fmt: skip
    status = await client.data("{ projections { name checkpoint headVersion lag state } }")
    assert status["projections"] == [
        {"name": name, "checkpoint": at, "headVersion": at, "lag": 0, "state": "RUNNING"}
        for name in projection_names()
    ]


async def test_two_all_in_one_servers_on_shared_stores_both_read_their_writes(
    start_server: Any,
) -> None:
    # Only one relay holds the lease; the other process must still see progress.
    servers = [start_server(SHOP_RELAY_POLL_INTERVAL="0.05") for _ in range(2)]
    for n, writer in enumerate(servers):
        async with httpx.AsyncClient(base_url=writer.url) as http:
            created = await create(Client(http), sku=f"mug-{n}")
        for reader in servers:
            async with httpx.AsyncClient(base_url=reader.url) as http:
                product = await Client(http).data(
                    PRODUCT, {"id": created["id"], "v": created["version"]}
                )
            assert product["product"]["sku"] == f"MUG-{n}"


def _counter(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_subscribers_of_one_change_share_its_execution(
    server: Server, client: Client
) -> None:
    """Ten subscribers with one selection and variables: each change is executed once
    for them (and once for the subscriber selecting something else), and all get it."""
    import contextlib

    created = await create(client)
    at_creation = {"id": created["id"], "v": created["version"]}
    other = """subscription($id: ID!, $v: Version) {
      productUpdated(id: $id, minVersion: $v) { id name version } }"""
    async with contextlib.AsyncExitStack() as stack:
        same = [
            await stack.enter_async_context(subscription(server, PRODUCT_UPDATED, at_creation))
            for _ in range(10)
        ]
        different = await stack.enter_async_context(subscription(server, other, at_creation))
        for next_payload in [*same, different]:
            assert (await next_payload())["data"]["productUpdated"]["version"] == created["version"]
        before = _counter(
            (await client.http.get("/metrics")).text, "shop_subscription_events_shared_total"
        )
        executed = _counter(
            (await client.http.get("/metrics")).text, "shop_subscription_events_executed_total"
        )
        restocked = (await client.data(RESTOCK, {"id": created["id"], "quantity": 3}))[
            "restockProduct"
        ]
        for next_payload in same:
            assert (await next_payload())["data"]["productUpdated"] == {
                "id": created["id"], "stockOnHand": 8, "version": restocked["version"]
            }  # fmt: skip
        assert (await different())["data"]["productUpdated"]["name"] == "Blue Mug"
        metrics = (await client.http.get("/metrics")).text
    assert _counter(metrics, "shop_subscription_events_shared_total") - before == 9
    assert _counter(metrics, "shop_subscription_events_executed_total") - executed == 2
