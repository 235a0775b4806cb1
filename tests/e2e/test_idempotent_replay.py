"""Idempotency keys on the production topology (PostgreSQL, two api processes): a retry
answers the first result and writes nothing, on another api process, after the one that
accepted the command was killed (kill -9), and after it restarted; a command cut off by
the kill is written at most once however often it is retried."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import httpx

from tests.e2e.conftest import Client, Cluster
from tests.e2e.test_shop_api import customer, product

PLACE = """mutation($customer: ID!, $product: ID!, $quantity: Int!, $key: String) {
  placeOrder(input: {customerId: $customer, lines: [{productId: $product, quantity: $quantity}]},
             idempotencyKey: $key) {
    success id version aggregateVersion errors { code field } } }"""
HISTORY = """query($customer: ID!, $product: ID!, $v: Version) {
  customer(id: $customer, minVersion: $v) { orderCount }
  orderHistory(customerId: $customer, first: 100, minVersion: $v) { edges { node { id } } }
  product(id: $product, minVersion: $v) { stockReserved } }"""


async def place(client: Client, key: str, quantity: int, shop: dict[str, str]) -> dict[str, Any]:
    variables = {**shop, "quantity": quantity, "key": key}
    result: dict[str, Any] = (await client.data(PLACE, variables))["placeOrder"]
    return result


async def test_a_key_answers_its_first_result_across_api_processes_and_their_kill(
    cluster: Cluster,
) -> None:
    victim, survivor = cluster.apis
    async with (
        httpx.AsyncClient(base_url=victim.url, timeout=30) as to_victim,
        httpx.AsyncClient(base_url=survivor.url, timeout=30) as to_survivor,
    ):
        other = Client(to_survivor)
        shop = {
            "product": (await product(other, "MUG", 100))["id"],
            "customer": (await customer(other))["id"],
        }

        # Accepted by one api process, which is then killed: the other answers the same.
        first = await place(Client(to_victim), "order-1", 2, shop)
        assert first["success"], first
        victim.kill()
        assert await place(other, "order-1", 2, shop) == first
        reused = await place(other, "order-1", 3, shop)  # the same key, other arguments
        assert [(e["code"], e["field"]) for e in reused["errors"]] == [
            ("IDEMPOTENCY_KEY_REUSED", "idempotencyKey")
        ], reused
        victim.start()
        to_victim.base_url = httpx.URL(victim.url)
        assert await place(Client(to_victim), "order-1", 2, shop) == first

        # Cut off by kill -9 at some point of its request: committed or not, its retries
        # (on either process) write it once and answer one result.
        cut_off = asyncio.ensure_future(place(Client(to_victim), "order-2", 5, shop))
        await asyncio.sleep(random.uniform(0, 0.05))  # a random point of the request
        victim.kill()
        # No answer, or a refusal of the shutdown: the client cannot tell what happened.
        with contextlib.suppress(httpx.TransportError, AssertionError):
            await cut_off
        second = await place(other, "order-2", 5, shop)
        assert second["success"], second
        assert await place(other, "order-2", 5, shop) == second
        victim.start()
        to_victim.base_url = httpx.URL(victim.url)
        assert await place(Client(to_victim), "order-2", 5, shop) == second

        # Two orders were written, one for each key: the read models say so at the
        # version of the last one.
        seen = await other.data(HISTORY, {**shop, "v": max(first["version"], second["version"])})
    assert seen["customer"] == {"orderCount": 2}, seen
    assert {edge["node"]["id"] for edge in seen["orderHistory"]["edges"]} == {
        first["id"], second["id"]
    }, seen  # fmt: skip
    assert seen["product"] == {"stockReserved": 7}, seen
