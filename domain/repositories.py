"""Loading and saving aggregates as rows, with an optimistic version check on save."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.aggregate import Aggregate
from domain.errors import VersionConflict
from domain.model import products
from domain.products import Product, ProductStatus


class Repository:
    """Tracks the aggregates a unit of work touched and the version each was loaded at."""

    table: sa.Table

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.seen: dict[str, Aggregate] = {}
        self._loaded_versions: dict[str, int] = {}

    def add(self, aggregate: Aggregate) -> None:
        self.seen[aggregate.id] = aggregate

    async def save(self, aggregate: Aggregate) -> None:
        """Writes an aggregate that raised events; fails if someone else changed it meanwhile."""
        row = self.to_row(aggregate)
        loaded = self._loaded_versions.get(aggregate.id)
        if loaded is None:
            await self.conn.execute(self.table.insert().values(**row))
            return
        key = self.table.c.id
        result = await self.conn.execute(
            self.table.update()
            .where(key == aggregate.id, self.table.c.version == loaded)
            .values(**row)
        )
        if result.rowcount != 1:
            raise VersionConflict(f"{aggregate.aggregate_type} {aggregate.id} changed meanwhile")

    async def _load_one(self, condition: sa.ColumnElement[bool]) -> Any:
        stmt = sa.select(self.table).where(condition).with_for_update()
        row = (await self.conn.execute(stmt)).mappings().first()
        if row is None:
            return None
        aggregate = self.from_row(row)
        self._loaded_versions[aggregate.id] = aggregate.version
        self.seen[aggregate.id] = aggregate
        return aggregate

    def to_row(self, aggregate: Any) -> dict[str, Any]:
        raise NotImplementedError

    def from_row(self, row: Any) -> Aggregate:
        raise NotImplementedError


class ProductRepository(Repository):
    table = products

    async def get(self, product_id: str) -> Product | None:
        product: Product | None = await self._load_one(products.c.id == product_id)
        return product

    async def sku_exists(self, sku: str) -> bool:
        stmt = sa.select(sa.literal(1)).where(products.c.sku == sku)
        return (await self.conn.execute(stmt)).first() is not None

    def to_row(self, aggregate: Any) -> dict[str, Any]:
        p: Product = aggregate
        return {
            "id": p.id,
            "sku": p.sku,
            "name": p.name,
            "description": p.description,
            "category": p.category,
            "price_cents": p.price_cents,
            "status": p.status.value,
            "stock_on_hand": p.stock_on_hand,
            "stock_reserved": p.stock_reserved,
            "version": p.version,
            "created_at": p.created_at,
            "updated_at": p.updated_at,
        }

    def from_row(self, row: Any) -> Product:
        return Product(
            id=row["id"],
            sku=row["sku"],
            name=row["name"],
            description=row["description"],
            category=row["category"],
            price_cents=row["price_cents"],
            status=ProductStatus(row["status"]),
            stock_on_hand=row["stock_on_hand"],
            stock_reserved=row["stock_reserved"],
            version=row["version"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )
