"""Wish lists over HTTP: a customer keeps its own, reads its own writes; admins only read."""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import Client, customer_token
from tests.e2e.test_shop_api import customer, product

ADD = """mutation($c: ID!, $p: ID!, $key: String) {
  addToWishlist(customerId: $c, productId: $p, idempotencyKey: $key) {
    success version errors { code field } } }"""
REMOVE = """mutation($c: ID!, $p: ID!) {
  removeFromWishlist(customerId: $c, productId: $p) { success version errors { code field } } }"""
READ = """query($c: ID!, $v: Version) {
  wishlist(customerId: $c, minVersion: $v) {
    customerId itemCount version items { productId sku productName } } }"""


async def change(client: Client, document: str, **variables: Any) -> dict[str, Any]:
    [result] = (await client.data(document, variables)).values()
    return dict(result)


async def test_a_customer_keeps_a_wish_list_and_reads_its_own_writes(client: Client) -> None:
    mug, cup = await product(client, "MUG", 5), await product(client, "CUP", 5)
    ada = (await customer(client))["id"]
    as_ada = client.as_(customer_token(ada))

    empty = await as_ada.data(READ, {"c": ada})
    assert empty["wishlist"] == {"customerId": ada, "itemCount": 0, "version": 0, "items": []}

    first = await change(as_ada, ADD, c=ada, p=mug["id"], key="wish-mug")
    await change(as_ada, ADD, c=ada, p=cup["id"])
    again = await change(as_ada, ADD, c=ada, p=mug["id"], key="wish-mug")
    assert again == first  # the idempotency key answers the first result
    removed = await change(as_ada, REMOVE, c=ada, p=mug["id"])
    assert removed["success"], removed

    listed = (await as_ada.data(READ, {"c": ada, "v": removed["version"]}))["wishlist"]
    [item] = listed["items"]
    assert item == {"productId": cup["id"], "sku": cup["sku"], "productName": cup["sku"]}
    assert listed["itemCount"] == 1
    assert listed["version"] == removed["version"]

    # Admins read any list, and change none.
    assert (await client.data(READ, {"c": ada, "v": removed["version"]}))["wishlist"] == listed
    refused = await change(client, ADD, c=ada, p=mug["id"])
    assert (refused["success"], refused["errors"]) == (False, [{"code": "FORBIDDEN",
                                                                "field": None}])  # fmt: skip


async def test_another_customers_list_is_refused_and_a_missing_product_not_found(
    client: Client,
) -> None:
    mug = await product(client, "MUG", 5)
    ada = (await customer(client))["id"]
    bob = (await customer(client, "bob@example.org", "Bob"))["id"]
    as_bob = client.as_(customer_token(bob))

    body = await as_bob.post(READ, {"c": ada})
    assert body["data"] is None
    assert [e["extensions"]["code"] for e in body["errors"]] == ["FORBIDDEN"]
    refused = await change(as_bob, ADD, c=ada, p=mug["id"])
    assert refused["errors"] == [{"code": "FORBIDDEN", "field": None}]

    missing = await change(as_bob, ADD, c=bob, p="no-such-product")
    assert (missing["success"], missing["errors"]) == (
        False, [{"code": "NOT_FOUND", "field": "productId"}]
    )  # fmt: skip
    absent = await change(as_bob, REMOVE, c=bob, p=mug["id"])
    assert absent["success"], absent  # removing what is not there changes nothing
