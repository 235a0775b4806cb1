"""Product read functions against the real read store: filters, orders, cursor pages.

They read documents and nothing else: the write store they were written from and the
way the relay applied them (``guard_mode``) are tested elsewhere, so these run on
SQLite once, not on every pair.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.bus import CommandBus
from domain.commands import CreateProduct, DiscontinueProduct, UpdateProduct
from projections import products as views
from projections.products import InvalidCursor, ProductFilter, ProductSort
from projections.progress import Progress
from projections.relay import Relay

Db = AsyncDatabase[dict[str, Any]]

CATALOGUE = [
    # sku, name, category, price, stock
    ("MUG-1", "blue Mug", "kitchen", 1299, 4),
    ("MUG-2", "Red mug", "kitchen", 999, 0),
    ("TEE-1", "T-shirt (large)", "clothing", 1999, 10),
    ("TEE-2", "t-shirt small", "clothing", 1999, 3),
    ("PAN-1", "Frying pan", "kitchen", 4500, 1),
    ("CAP-1", "Cap", "clothing", 500, 0),
]


@pytest.fixture
def database_url(migrated_sqlite: Path, tmp_path: Path) -> str:
    path = tmp_path / "write.db"
    shutil.copyfile(migrated_sqlite, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
async def shop(bus: CommandBus, engine: AsyncEngine, db: Db) -> dict[str, str]:
    ids = {}
    for sku, name, category, price, stock in CATALOGUE:
        outcome = await bus.execute(
            CreateProduct(
                sku=sku,
                name=name,
                category=category,
                price_cents=price,
                initial_stock=stock,
                description=f"a {name.lower()} for testing",
            )
        )
        assert outcome.id is not None
        ids[sku] = outcome.id
    await bus.execute(DiscontinueProduct(ids["CAP-1"]))
    await bus.execute(UpdateProduct(ids["PAN-1"], description="cast iron, 28cm"))
    relay = Relay(engine, db, [views.ProductsProjection()], Progress(), write_chunk=32)
    await relay.setup()
    await relay.run_once()
    return ids


EVERYTHING = ProductFilter()


async def skus(
    db: Db, f: ProductFilter = EVERYTHING, sort: ProductSort = ProductSort.NAME_ASC
) -> list[str]:
    page = await views.list_products(db, f, sort, 100, None)
    assert page.total_count == len(page.documents)
    return [d["sku"] for d in page.documents]


async def test_lookup_by_id_and_by_sku_in_any_case(db: Db, shop: dict[str, str]) -> None:
    by_id = await views.find_product(db, shop["MUG-1"])
    by_sku = await views.find_product_by_sku(db, "mug-1")
    assert by_id is not None
    assert by_sku is not None
    assert by_id["_id"] == by_sku["_id"] == shop["MUG-1"]
    assert await views.find_product(db, "missing") is None


async def test_names_sort_case_insensitively(db: Db, shop: dict[str, str]) -> None:
    assert await skus(db) == ["MUG-1", "CAP-1", "PAN-1", "MUG-2", "TEE-1", "TEE-2"]


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        (ProductSort.PRICE_ASC, ["CAP-1", "MUG-2", "MUG-1"]),
        (ProductSort.PRICE_DESC, ["PAN-1"]),
        (ProductSort.NEWEST, ["CAP-1", "PAN-1", "TEE-2"]),
    ],
)
async def test_each_order_starts_where_expected(
    db: Db, shop: dict[str, str], sort: ProductSort, expected: list[str]
) -> None:
    assert (await skus(db, sort=sort))[: len(expected)] == expected


async def test_equal_prices_are_ordered_by_id(db: Db, shop: dict[str, str]) -> None:
    order = await skus(db, sort=ProductSort.PRICE_ASC)
    tees = sorted(["TEE-1", "TEE-2"], key=lambda s: shop[s])
    assert order[3:5] == tees


@pytest.mark.parametrize(
    ("f", "expected"),
    [
        (ProductFilter(search="MUG"), {"MUG-1", "MUG-2"}),
        (ProductFilter(search="cast iron"), {"PAN-1"}),
        (ProductFilter(search="tee-"), {"TEE-1", "TEE-2"}),
        (ProductFilter(search="(large)"), {"TEE-1"}),
        (ProductFilter(search=".*"), set()),
        (ProductFilter(category="clothing"), {"TEE-1", "TEE-2", "CAP-1"}),
        (ProductFilter(status="DISCONTINUED"), {"CAP-1"}),
        (ProductFilter(min_price_cents=1000, max_price_cents=1999), {"MUG-1", "TEE-1", "TEE-2"}),
        (ProductFilter(in_stock=True), {"MUG-1", "TEE-1", "TEE-2", "PAN-1"}),
        (ProductFilter(in_stock=False), {"MUG-2", "CAP-1"}),
        (ProductFilter(category="kitchen", in_stock=True, max_price_cents=2000), {"MUG-1"}),
    ],
)
async def test_filters(db: Db, shop: dict[str, str], f: ProductFilter, expected: set[str]) -> None:
    assert set(await skus(db, f)) == expected


@pytest.mark.parametrize("sort", list(ProductSort))
async def test_pages_cover_every_product_once_in_order(
    db: Db, shop: dict[str, str], sort: ProductSort
) -> None:
    whole = await skus(db, sort=sort)
    seen: list[str] = []
    after = None
    while True:
        page = await views.list_products(db, ProductFilter(), sort, 4, after)
        assert page.total_count == 6
        seen += [d["sku"] for d in page.documents]
        if not page.has_next_page:
            break
        after = page.cursors[-1]
    assert seen == whole


async def test_a_foreign_or_garbled_cursor_is_refused(db: Db, shop: dict[str, str]) -> None:
    page = await views.list_products(db, ProductFilter(), ProductSort.NAME_ASC, 1, None)
    with pytest.raises(InvalidCursor):
        await views.list_products(db, ProductFilter(), ProductSort.PRICE_ASC, 1, page.cursors[0])
    with pytest.raises(InvalidCursor):
        await views.list_products(db, ProductFilter(), ProductSort.NAME_ASC, 1, "not-a-cursor")
