"""Every read model built by the relay on real stores, checked against the write model."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.commands import (
    CancelOrder,
    ChangeProductPrice,
    DiscontinueProduct,
    RenameCustomer,
    RestockProduct,
    ShipOrder,
    UpdateProduct,
)
from domain.errors import DomainError
from domain.model import order_lines, orders, products
from domain.store import create_engine, create_schema
from projections import audit, customers, dashboard, history, sales
from projections import orders as order_views
from tests.integration.shop import Shop, snapshot

Db = AsyncDatabase[dict[str, Any]]

pytestmark = pytest.mark.usefixtures("guard_mode")


async def test_customer_figures_count_orders_that_are_not_cancelled(
    engine: AsyncEngine, db: Db
) -> None:
    shop = Shop(engine, db)
    mug, ada = await shop.product("MUG", price=1250), await shop.customer()
    first = await shop.order(ada, (mug, 2))
    await shop.order(ada, (mug, 1))
    await shop.do(CancelOrder(first, "no"))
    await shop.sync()
    document = await customers.find_customer(db, ada)
    assert document is not None
    assert (document["orderCount"], document["lifetimeValueCents"]) == (1, 1250)


async def mug_ada_and_bob(shop: Shop) -> tuple[str, str, str]:
    return await shop.product("MUG", stock=100), await shop.customer(), await shop.customer("Bob")


async def test_order_history_pages_newest_first(engine: AsyncEngine, db: Db) -> None:
    shop = Shop(engine, db)
    mug, ada, bob = await mug_ada_and_bob(shop)
    placed = [await shop.order(ada if n % 3 else bob, (mug, 1)) for n in range(1, 25)]
    await shop.sync()
    ada_orders = [o for n, o in enumerate(placed, 1) if n % 3][::-1]
    seen, after, pages = [], None, 0
    while True:
        page = await history.order_history(db, ada, 5, after)
        assert page.total_count == len(ada_orders) == 16
        seen += [d["_id"] for d in page.documents]
        pages += 1
        if not page.has_next_page:
            break
        after = page.cursors[-1]
    assert (seen, pages) == (ada_orders, 4)
    assert (await history.order_history(db, "nobody", 5, None)).total_count == 0


async def test_a_rename_reaches_every_order_but_line_names_stay_as_ordered(
    engine: AsyncEngine, db: Db
) -> None:
    shop = Shop(engine, db)
    mug, ada, bob = await mug_ada_and_bob(shop)
    ada_orders = [await shop.order(ada, (mug, 1)) for _ in range(25)]
    bob_order = await shop.order(bob, (mug, 1))
    await shop.sync()
    await shop.do(UpdateProduct(mug, name="Renamed mug"))
    await shop.do(RenameCustomer(ada, "Ada Lovelace"))
    later = await shop.order(ada, (mug, 1))
    await shop.sync()
    page = await history.order_history(db, ada, 100, None)
    assert [d["_id"] for d in page.documents] == [later, *reversed(ada_orders)]
    assert {d["customer"]["name"] for d in page.documents} == {"Ada Lovelace"}
    assert [d["lines"][0]["productName"] for d in page.documents] == ["Renamed mug"] + [
        "MUG name"
    ] * 25
    bob_doc = await order_views.find_order(db, bob_order)
    assert bob_doc is not None
    assert bob_doc["customer"]["name"] == "Bob"


async def test_the_shipping_queue_holds_placed_orders_oldest_first(
    engine: AsyncEngine, db: Db
) -> None:
    shop = Shop(engine, db)
    mug, ada = await shop.product("MUG"), await shop.customer()
    placed = [await shop.order(ada, (mug, 1)) for _ in range(5)]
    await shop.do(ShipOrder(placed[1], "T1"))
    await shop.do(CancelOrder(placed[3], "no"))
    await shop.sync()
    first_page = await order_views.shipping_queue(db, 2, None)
    rest = await order_views.shipping_queue(db, 2, first_page.cursors[-1])
    assert [d["_id"] for d in first_page.documents + rest.documents] == [
        placed[0], placed[2], placed[4]
    ]  # fmt: skip
    assert (first_page.has_next_page, rest.has_next_page, rest.total_count) == (True, False, 3)


async def test_top_products_rank_units_sold_without_cancelled_orders(
    engine: AsyncEngine, db: Db
) -> None:
    shop = Shop(engine, db)
    mug, tee, cap = (
        await shop.product("MUG", price=500),
        await shop.product("TEE"),
        await shop.product("CAP"),
    )
    ada = await shop.customer()
    await shop.order(ada, (mug, 3), (tee, 1))
    cancelled = await shop.order(ada, (tee, 5))
    await shop.order(ada, (tee, 2))
    await shop.do(CancelOrder(cancelled, "no"))
    await shop.sync()
    top = await sales.top_products(db, 10)
    assert [(d["sku"], d["unitsSold"], d["revenueCents"], d["orderCount"]) for d in top] == [
        ("TEE", 3, 3000, 2),
        ("MUG", 3, 1500, 1),
    ]
    assert cap not in {d["_id"] for d in top}


async def test_the_dashboard_counts_everything(engine: AsyncEngine, db: Db) -> None:
    shop = Shop(engine, db)
    mug, tee = await shop.product("MUG", stock=6, price=1000), await shop.product("TEE", stock=50)
    old = await shop.product("OLD", stock=1)
    await shop.do(DiscontinueProduct(old))  # low, but not active: not counted
    ada = await shop.customer()
    shipped = await shop.order(ada, (mug, 2))  # MUG now 4 available: low
    cancelled = await shop.order(ada, (tee, 10))
    await shop.order(ada, (tee, 1))
    await shop.do(ShipOrder(shipped, "T"))
    await shop.do(CancelOrder(cancelled, "no"))
    await shop.sync()
    board = await dashboard.read_dashboard(db)
    shown = (*dashboard.COUNTERS, "lowStockCount", "averageOrderValueCents")
    assert {k: board[k] for k in shown} == {
        "productCount": 3, "customerCount": 1, "orderCount": 3, "openOrderCount": 1,
        "shippedOrderCount": 1, "cancelledOrderCount": 1, "revenueCents": 3000,
        "lowStockCount": 1, "averageOrderValueCents": 1500,
    }  # fmt: skip
    assert board["version"] == shop.relay.positions["dashboard"]


async def test_the_audit_trail_pages_through_one_aggregate_in_order(
    engine: AsyncEngine, db: Db
) -> None:
    shop = Shop(engine, db)
    mug = await shop.product("MUG")
    await shop.product("TEE")
    for price in (1, 2, 3):
        await shop.do(ChangeProductPrice(mug, price))
    await shop.sync()
    first = await audit.audit_trail(db, mug, 3, None)
    rest = await audit.audit_trail(db, mug, 3, first.cursors[-1])
    events = first.documents + rest.documents
    assert [(e["type"], e["aggregateVersion"]) for e in events] == [
        ("ProductCreated", 1), ("ProductPriceChanged", 2), ("ProductPriceChanged", 3),
        ("ProductPriceChanged", 4),
    ]  # fmt: skip
    assert [e["_id"] for e in events] == [1, 3, 4, 5]
    assert events[-1]["data"] == {"priceCents": 3, "previousPriceCents": 2}


async def test_replaying_the_whole_log_changes_no_read_model(engine: AsyncEngine, db: Db) -> None:
    shop = Shop(engine, db)
    mug, ada = await shop.product("MUG"), await shop.customer()
    first = await shop.order(ada, (mug, 2))
    await shop.order(ada, (mug, 1))
    await shop.do(RestockProduct(mug, 5))
    await shop.do(CancelOrder(first, "no"))
    await shop.do(RenameCustomer(ada, "Ada L."))
    await shop.sync()
    before = await snapshot(db)
    for name in shop.relay.positions:
        shop.relay.positions[name] = 0
    await shop.sync()
    assert await snapshot(db) == before


# --- property: the read models agree with a recomputation from the write model ------------

operation = st.one_of(
    st.tuples(st.just("product"), st.integers(0, 12)),
    st.tuples(st.just("customer")),
    st.tuples(
        st.just("order"),
        st.integers(0, 5),
        st.lists(st.tuples(st.integers(0, 5), st.integers(1, 6)), min_size=1, max_size=3),
    ),
    st.tuples(st.just("cancel"), st.integers(0, 9)),
    st.tuples(st.just("ship"), st.integers(0, 9)),
    st.tuples(st.just("restock"), st.integers(0, 5), st.integers(1, 5)),
    st.tuples(st.just("discontinue"), st.integers(0, 5)),
    st.tuples(st.just("price"), st.integers(0, 5), st.integers(0, 3000)),
)


async def run_mix(shop: Shop, ops: list[tuple[Any, ...]]) -> None:
    product_ids: list[str] = []
    customer_ids: list[str] = []
    order_ids: list[str] = []

    def pick(ids: list[str], i: int) -> str | None:
        return ids[i % len(ids)] if ids else None

    for op in ops:
        try:
            match op:
                case ("product", stock):
                    product_ids.append(
                        await shop.product(f"P{len(product_ids)}", stock, 100 + stock)
                    )
                case ("customer",):
                    customer_ids.append(await shop.customer())
                case ("order", c, lines):
                    who = pick(customer_ids, c)
                    wanted = [(pick(product_ids, p), q) for p, q in lines]
                    if who and all(p for p, _ in wanted):
                        order_ids.append(await shop.order(who, *wanted))  # type: ignore[arg-type]
                case ("cancel" | "ship" as verb, o):
                    if target := pick(order_ids, o):
                        await shop.do(
                            CancelOrder(target, "r") if verb == "cancel" else ShipOrder(target, "t")
                        )
                case ("restock", p, q):
                    if target := pick(product_ids, p):
                        await shop.do(RestockProduct(target, q))
                case ("discontinue", p):
                    if target := pick(product_ids, p):
                        await shop.do(DiscontinueProduct(target))
                case ("price", p, price):
                    if target := pick(product_ids, p):
                        await shop.do(ChangeProductPrice(target, price))
        except DomainError:
            pass  # refused commands are part of a realistic mix; they write nothing


async def expected_from_write_model(engine: AsyncEngine) -> tuple[dict[str, int], dict[str, Any]]:
    kept = orders.c.status != "CANCELLED"
    async with engine.connect() as conn:

        async def count(*where: Any, table: sa.Table = orders) -> int:
            return int(
                await conn.scalar(sa.select(sa.func.count()).select_from(table).where(*where)) or 0
            )

        revenue = int(
            await conn.scalar(
                sa.select(sa.func.coalesce(sa.func.sum(orders.c.total_cents), 0)).where(kept)
            )
            or 0
        )
        open_, shipped = (
            await count(orders.c.status == "PLACED"),
            await count(orders.c.status == "SHIPPED"),
        )
        board = {
            "productCount": await count(table=products),
            "customerCount": int(await conn.scalar(sa.text("SELECT count(*) FROM customers")) or 0),
            "orderCount": await count(),
            "openOrderCount": open_,
            "shippedOrderCount": shipped,
            "cancelledOrderCount": await count(orders.c.status == "CANCELLED"),
            "revenueCents": revenue,
            "lowStockCount": await count(
                products.c.status == "ACTIVE",
                products.c.stock_on_hand - products.c.stock_reserved < 5,
                table=products,
            ),
            "averageOrderValueCents": revenue // (open_ + shipped) if open_ + shipped else 0,
        }
        per_product: dict[str, Any] = {}
        for row in (await conn.execute(sa.select(products))).mappings():
            per_product[row["id"]] = {
                "stockOnHand": row["stock_on_hand"], "stockReserved": row["stock_reserved"],
                "stockAvailable": row["stock_on_hand"] - row["stock_reserved"],
                "unitsSold": 0, "revenueCents": 0, "orderCount": 0,
            }  # fmt: skip
        sold = sa.select(order_lines).join(orders).where(kept)
        for line in (await conn.execute(sold)).mappings():
            figures = per_product[line["product_id"]]
            figures["unitsSold"] += line["quantity"]
            figures["revenueCents"] += line["quantity"] * line["unit_price_cents"]
            figures["orderCount"] += 1
    return board, per_product


async def check_mix(ops: list[tuple[Any, ...]], mongo_url: str, work: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{work / f'{uuid.uuid4().hex}.db'}")
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    name = f"prop_{uuid.uuid4().hex[:12]}"
    try:
        await create_schema(engine)
        shop = Shop(engine, client[name])
        await run_mix(shop, ops)
        await shop.sync()
        board, per_product = await expected_from_write_model(engine)
        actual = await dashboard.read_dashboard(shop.db)
        assert {k: actual[k] for k in board} == board
        for product_id, figures in per_product.items():
            doc = await shop.db.products.find_one({"_id": product_id})
            sale = await shop.db.product_sales.find_one({"_id": product_id})
            assert doc is not None
            assert sale is not None
            assert {
                k: doc[k] for k in ("stockOnHand", "stockReserved", "stockAvailable", "unitsSold")
            } == {
                k: figures[k]
                for k in ("stockOnHand", "stockReserved", "stockAvailable", "unitsSold")
            }
            assert {k: sale[k] for k in ("unitsSold", "revenueCents", "orderCount")} == {
                k: figures[k] for k in ("unitsSold", "revenueCents", "orderCount")
            }
    finally:
        await client.drop_database(name)
        await client.close()
        await engine.dispose()


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(operation, min_size=5, max_size=40))
def test_dashboard_sales_and_stock_equal_a_recomputation_from_the_write_model(
    ops: list[tuple[Any, ...]], mongo_url: str, tmp_path: Path
) -> None:
    asyncio.run(
        check_mix([("product", 8), ("product", 3), ("customer",), *ops], mongo_url, tmp_path)
    )
