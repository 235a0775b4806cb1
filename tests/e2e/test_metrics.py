"""/metrics as an operator reads it: per-operation counts, errors and latency, command
timings and group sizes, projection lag, NOT_YET_CONSISTENT answers, open sockets and
subscriptions."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import eventually
from tests.e2e.conftest import Client, Server, subscription
from tests.e2e.test_products_api import PRODUCT_UPDATED, create


async def scrape(server: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        text = (await http.get("/metrics")).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_operations_commands_lag_and_connections_are_measured(start_server: Any) -> None:
    # The minVersion reads below must catch up within it, and TooSoon waits it out.
    server: Server = start_server(SHOP_CONSISTENCY_TIMEOUT="3")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        client = Client(http)
        before = await scrape(server)
        created = await create(client)
        for _ in range(3):
            await client.data(
                "query ShopProduct($id: ID!, $v: Version) { product(id: $id, minVersion: $v) "
                "{ sku } }",
                {"id": created["id"], "v": created["version"]},
            )
        await client.post("query Broken { nosuchfield }")
        far = await client.post("query TooSoon { dashboard(minVersion: 1000000) { version } }")
        assert far["errors"][0]["extensions"]["code"] == "NOT_YET_CONSISTENT"
        await client.post("{ __typename }")
        over_get = await http.get(
            "/graphql", params={"query": 'mutation ViaGet { cancelOrder(id: "x", reason: "r") '
                                         "{ success } }"},
        )  # fmt: skip
        assert over_get.status_code == 405

        after = await scrape(server)

        def grew(name: str, by: float, **labels: str) -> None:
            change = value(after, name, **labels) - value(before, name, **labels)
            assert change == by, (name, labels, change)

        grew("shop_graphql_operations_total", 3, operation="ShopProduct", type="query")
        grew("shop_graphql_operation_duration_seconds_count", 3,
             operation="ShopProduct", type="query")  # fmt: skip
        grew("shop_graphql_operations_total", 1, operation="_anonymous", type="query")
        grew("shop_graphql_errors_total", 1,
             operation="Broken", code="GRAPHQL_VALIDATION_FAILED")  # fmt: skip
        grew("shop_graphql_errors_total", 1, operation="TooSoon", code="NOT_YET_CONSISTENT")
        grew("shop_not_yet_consistent_total", 1, projection="dashboard")
        grew("shop_graphql_errors_total", 1, operation="ViaGet", code="BAD_REQUEST")
        grew("shop_command_duration_seconds_count", 1,
             command="CreateProduct", outcome="accepted")  # fmt: skip
        assert value(after, "shop_command_group_size_count") >= 1
        assert value(after, "shop_relay_batch_duration_seconds_count") >= 1
        # Caught up (the reads above waited for the write): no lag.
        assert value(after, "shop_projection_lag_events", projection="products") == 0
        assert value(after, "shop_projection_lag_seconds", projection="products") == 0

        async with subscription(server, PRODUCT_UPDATED, {"id": created["id"], "v": 1}) as nxt:
            await nxt()
            live = await scrape(server)
            assert value(live, "shop_open_websockets") == 1
            assert value(live, "shop_open_subscriptions", field="productUpdated") == 1
        # Closing the socket ends the subscription: both gauges fall back.

        async def settled() -> bool:
            closed = await scrape(server)
            return (
                value(closed, "shop_open_websockets") == 0
                and value(closed, "shop_open_subscriptions", field="productUpdated") == 0
            )

        await eventually(settled, within=10)
        # The subscription was counted when it ended.
        assert value(await scrape(server), "shop_graphql_operations_total",
                     operation="_anonymous", type="subscription") == 1  # fmt: skip
