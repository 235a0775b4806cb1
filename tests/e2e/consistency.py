"""Do the read models (over GraphQL) equal what the write model (in SQL) implies?"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from domain.model import order_lines, orders, outbox, products
from tests.e2e.conftest import Client

READ = """query($v: Version, $first: Int) {
  dashboard(minVersion: $v) {
    productCount customerCount orderCount openOrderCount shippedOrderCount
    cancelledOrderCount revenueCents
  }
  products(first: $first, minVersion: $v) {
    edges { node { id stockOnHand stockReserved status } }
  }
  topProducts(limit: $first, minVersion: $v) { productId unitsSold revenueCents orderCount }
}"""
HISTORY = """query($c: ID!, $v: Version, $after: String) {
  orderHistory(customerId: $c, first: 100, after: $after, minVersion: $v) {
    pageInfo { hasNextPage endCursor } edges { node { id status totalCents } }
  }
}"""


async def write_model(database_url: str) -> dict[str, Any]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            last = sa.select(sa.func.coalesce(sa.func.max(outbox.c.position), 0))
            head = int(await conn.scalar(last) or 0)
            product_rows = (await conn.execute(sa.select(products))).mappings().all()
            order_rows = (await conn.execute(sa.select(orders))).mappings().all()
            line_rows = (await conn.execute(sa.select(order_lines))).mappings().all()
            customers = int(await conn.scalar(sa.text("SELECT count(*) FROM customers")) or 0)
    finally:
        await engine.dispose()
    kept = {o["id"] for o in order_rows if o["status"] != "CANCELLED"}
    sales: dict[str, Counter[str]] = defaultdict(Counter)
    for line in line_rows:
        if line["order_id"] in kept:
            sold = sales[line["product_id"]]
            sold["unitsSold"] += line["quantity"]
            sold["revenueCents"] += line["quantity"] * line["unit_price_cents"]
            sold["orderCount"] += 1
    statuses = Counter(o["status"] for o in order_rows)
    return {
        "head": head,
        "dashboard": {
            "productCount": len(product_rows),
            "customerCount": customers,
            "orderCount": len(order_rows),
            "openOrderCount": statuses["PLACED"],
            "shippedOrderCount": statuses["SHIPPED"],
            "cancelledOrderCount": statuses["CANCELLED"],
            "revenueCents": sum(o["total_cents"] for o in order_rows if o["id"] in kept),
        },
        "products": {
            p["id"]: {
                "stockOnHand": p["stock_on_hand"],
                "stockReserved": p["stock_reserved"],
                "status": p["status"],
            }
            for p in product_rows
        },
        "sales": {
            p["id"]: {
                "unitsSold": sales[p["id"]]["unitsSold"],
                "revenueCents": sales[p["id"]]["revenueCents"],
                "orderCount": sales[p["id"]]["orderCount"],
            }
            for p in product_rows
            if sales[p["id"]]["unitsSold"]  # topProducts lists what sold at least one unit
        },
        "orders": {
            o["id"]: {"status": o["status"], "totalCents": o["total_cents"]} for o in order_rows
        },
        "customers_with_orders": sorted({o["customer_id"] for o in order_rows}),
    }


async def read_models(client: Client, expected: dict[str, Any]) -> dict[str, Any]:
    """The read models at the write model's head, in :func:`write_model`'s shape."""
    head = expected["head"]
    data = await client.data(READ, {"v": head, "first": 100})
    nodes = (e["node"] for e in data["products"]["edges"])
    sales = {
        s["productId"]: {f: v for f, v in s.items() if f != "productId"}
        for s in data["topProducts"]
    }
    found: dict[str, Any] = {}
    for customer in expected["customers_with_orders"]:
        after = None
        while True:
            variables = {"c": customer, "v": head, "after": after}
            page = (await client.data(HISTORY, variables))["orderHistory"]
            found.update({e["node"]["id"]: e["node"] for e in page["edges"]})
            if not page["pageInfo"]["hasNextPage"]:
                break
            after = page["pageInfo"]["endCursor"]
    return {
        "dashboard": data["dashboard"],
        "products": {n.pop("id"): n for n in nodes},
        "sales": sales,
        "orders": {
            k: {"status": n["status"], "totalCents": n["totalCents"]} for k, n in found.items()
        },
    }


async def assert_read_models_match(client: Client, database_url: str) -> dict[str, Any]:
    """Reads every read model at the write model's head and compares; the expectation."""
    expected = await write_model(database_url)
    found = await read_models(client, expected)
    assert found["dashboard"] == expected["dashboard"]
    assert found["products"] == expected["products"]
    assert found["sales"] == expected["sales"]
    assert found["orders"] == expected["orders"]
    return expected
