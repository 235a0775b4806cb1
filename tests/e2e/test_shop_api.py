"""Customers, orders and the read models, black-box over HTTP and WebSocket.

The module's tests share their servers (see ``server``): each makes customers and
products of its own and counts from where it started.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.e2e.conftest import Client, Server, subscription, unique

CREATE_PRODUCT = """mutation($sku: String!, $stock: Int!) {
  createProduct(input: {sku: $sku, name: $sku, category: "c", priceCents: 1000,
                        initialStock: $stock}) { success id version } }"""
REGISTER = """mutation($email: String!, $name: String!) {
  registerCustomer(input: {email: $email, name: $name,
    address: {line1: "Main St 1", city: "Berlin", postalCode: "10115", country: "de"}}) {
    success id version errors { code field } } }"""
PLACE = """mutation($customer: ID!, $product: ID!, $quantity: Int!) {
  placeOrder(input: {customerId: $customer, lines: [{productId: $product, quantity: $quantity}]}) {
    success id version errors { code field } } }"""


async def product(client: Client, sku: str, stock: int) -> dict[str, Any]:
    """Creates a product whose SKU is ``sku`` made unique; its answer and its ``sku``."""
    sku = unique(sku).upper()
    result: dict[str, Any] = (await client.data(CREATE_PRODUCT, {"sku": sku, "stock": stock}))[
        "createProduct"
    ]
    assert result["success"]
    return {**result, "sku": sku}


async def customer(
    client: Client, email: str = "ada@example.org", name: str = "Ada"
) -> dict[str, Any]:
    """Registers a customer whose email is ``email`` made unique; its answer and its
    ``email``."""
    local, domain = email.split("@")
    email = f"{unique(local)}@{domain}"
    result: dict[str, Any] = (await client.data(REGISTER, {"email": email, "name": name}))[
        "registerCustomer"
    ]
    assert result["success"], result
    return {**result, "email": email}


DASHBOARD = """query($v: Version) {
  dashboard(minVersion: $v) { orderCount openOrderCount lowStockCount shippedOrderCount } }"""


async def dashboard(client: Client, at: int) -> dict[str, int]:
    figures: dict[str, int] = (await client.data(DASHBOARD, {"v": at}))["dashboard"]
    return figures


async def place(client: Client, who: str, what: str, quantity: int = 1) -> dict[str, Any]:
    variables = {"customer": who, "product": what, "quantity": quantity}
    result: dict[str, Any] = (await client.data(PLACE, variables))["placeOrder"]
    return result


async def test_fifty_concurrent_orders_for_ten_units_sell_exactly_ten(client: Client) -> None:
    mug, ada = await product(client, "MUG", 10), await customer(client)
    before = await dashboard(client, ada["version"])
    results = await asyncio.gather(*(place(client, ada["id"], mug["id"]) for _ in range(50)))
    sold = [r for r in results if r["success"]]
    refused = [r for r in results if not r["success"]]
    assert len(sold) == 10
    assert {(e["code"], e["field"]) for r in refused for e in r["errors"]} == {
        ("INSUFFICIENT_STOCK", "lines.0.quantity")
    }
    at = max(r["version"] for r in sold)
    figures = await client.data(
        """query($id: ID!, $v: Version) {
             product(id: $id, minVersion: $v) {
               stockOnHand stockReserved stockAvailable unitsSold }
             dashboard(minVersion: $v) {
               orderCount openOrderCount lowStockCount shippedOrderCount }
             customer(id: "x", minVersion: $v) { id } }""",
        {"id": mug["id"], "v": at},
    )
    assert figures["product"] == {
        "stockOnHand": 10, "stockReserved": 10, "stockAvailable": 0, "unitsSold": 10
    }  # fmt: skip
    change = {name: figures["dashboard"][name] - before[name] for name in before}
    assert change == {
        "orderCount": 10, "openOrderCount": 10, "lowStockCount": 1, "shippedOrderCount": 0
    }  # fmt: skip


async def test_a_renamed_customer_shows_in_every_order_at_the_renames_version(
    client: Client,
) -> None:
    mug, ada = await product(client, "MUG", 100), await customer(client)
    for _ in range(20):
        assert (await place(client, ada["id"], mug["id"]))["success"]
    renamed = (
        await client.data(
            'mutation($id: ID!) { renameCustomer(id: $id, name: "Ada Lovelace") { version } }',
            {"id": ada["id"]},
        )
    )["renameCustomer"]
    history = await client.data(
        """query($id: ID!, $v: Version) {
             orderHistory(customerId: $id, first: 50, minVersion: $v) {
               totalCount edges { node { customer { name email } lines { productName } } } }
             customer(id: $id, minVersion: $v) { name orderCount lifetimeValueCents } }""",
        {"id": ada["id"], "v": renamed["version"]},
    )
    nodes = [edge["node"] for edge in history["orderHistory"]["edges"]]
    assert history["orderHistory"]["totalCount"] == len(nodes) == 20
    assert {n["customer"]["name"] for n in nodes} == {"Ada Lovelace"}
    assert history["customer"] == {
        "name": "Ada Lovelace", "orderCount": 20, "lifetimeValueCents": 20_000
    }  # fmt: skip


async def test_customer_and_order_errors_over_http(client: Client) -> None:
    mug, ada = await product(client, "MUG", 1), await customer(client)
    duplicate = await client.data(REGISTER, {"email": ada["email"].upper(), "name": "Ada"})
    assert duplicate["registerCustomer"]["errors"] == [{"code": "DUPLICATE", "field": "email"}]
    unknown = await place(client, "nobody", mug["id"])
    assert unknown["errors"] == [{"code": "NOT_FOUND", "field": "customerId"}]
    order = await place(client, ada["id"], mug["id"])
    shipped = await client.data(
        'mutation($id: ID!) { shipOrder(id: $id, trackingNumber: "T-1") { success } }',
        {"id": order["id"]},
    )
    assert shipped["shipOrder"]["success"]
    late = await client.data(
        'mutation($id: ID!) { cancelOrder(id: $id, reason: "late") { errors { code } } }',
        {"id": order["id"]},
    )
    assert late["cancelOrder"]["errors"] == [{"code": "INVALID_STATE"}]


async def test_events_subscription_sees_every_position_once_in_order_during_a_burst(
    server: Server, client: Client
) -> None:
    mug, ada = await product(client, "MUG", 1000), await customer(client)
    query = "subscription($after: Version) { events(afterVersion: $after) { version } }"
    async with subscription(server, query, {"after": mug["version"] - 1}) as next_payload:
        burst = asyncio.gather(*(place(client, ada["id"], mug["id"]) for _ in range(40)))
        # The product, the customer and forty orders, read while the orders are written.
        seen = [(await next_payload())["data"]["events"]["version"] for _ in range(42)]
        results = await burst
    assert all(r["success"] for r in results)
    first = mug["version"]
    assert seen == list(range(first, first + 42))
    assert max(r["version"] for r in results) == first + 41  # nothing else wrote meanwhile


async def test_events_subscription_filters_by_type_after_a_version(
    server: Server, client: Client
) -> None:
    mug, ada = await product(client, "MUG", 10), await customer(client)
    first = await place(client, ada["id"], mug["id"])
    second = await place(client, ada["id"], mug["id"])
    query = """subscription($after: Version) {
      events(afterVersion: $after, types: ["OrderPlaced"]) { version type data } }"""
    async with subscription(server, query, {"after": first["version"]}) as next_payload:
        event = (await next_payload())["data"]["events"]
        assert (event["version"], event["type"]) == (second["version"], "OrderPlaced")
        assert event["data"]["totalCents"] == 1000
        third = await place(client, ada["id"], mug["id"])
        assert (await next_payload())["data"]["events"]["version"] == third["version"]


async def test_order_and_dashboard_subscriptions_follow_changes(
    server: Server, client: Client
) -> None:
    mug, ada = await product(client, "MUG", 10), await customer(client)
    before = await dashboard(client, ada["version"])
    order = await place(client, ada["id"], mug["id"], 2)
    order_query = """subscription($id: ID!, $v: Version) {
      orderUpdated(id: $id, minVersion: $v) { status trackingNumber totalCents version } }"""
    board_query = """subscription($v: Version) {
      dashboardUpdated(minVersion: $v) { orderCount shippedOrderCount version } }"""
    variables = {"id": order["id"], "v": order["version"]}
    async with (
        subscription(server, order_query, variables) as next_order,
        subscription(server, board_query, {"v": order["version"]}) as next_board,
    ):
        assert (await next_order())["data"]["orderUpdated"]["status"] == "PLACED"
        board = (await next_board())["data"]["dashboardUpdated"]
        assert board["orderCount"] == before["orderCount"] + 1
        await client.data(
            'mutation($id: ID!) { shipOrder(id: $id, trackingNumber: "T-9") { success } }',
            {"id": order["id"]},
        )
        updated = (await next_order())["data"]["orderUpdated"]
        assert (updated["status"], updated["trackingNumber"], updated["totalCents"]) == (
            "SHIPPED", "T-9", 2000
        )  # fmt: skip
        board = (await next_board())["data"]["dashboardUpdated"]
        assert board["shippedOrderCount"] == before["shippedOrderCount"] + 1
