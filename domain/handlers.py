"""Command handlers: plain functions of (command, unit of work), registered in HANDLERS.

Each returns the aggregate it created or changed; the bus turns that into the
command's outcome.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from domain.aggregate import Aggregate
from domain.commands import (
    ChangeProductPrice,
    Command,
    CreateProduct,
    DiscontinueProduct,
    RestockProduct,
    UpdateProduct,
)
from domain.errors import Duplicate, NotFound
from domain.products import Product, normalise_sku
from domain.uow import UnitOfWork

Handler = Callable[[Any, UnitOfWork], Awaitable[Aggregate]]


async def create_product(cmd: CreateProduct, uow: UnitOfWork) -> Aggregate:
    sku = normalise_sku(cmd.sku)
    product = Product.create(
        id=str(uuid.uuid4()),
        sku=sku,
        name=cmd.name,
        description=cmd.description,
        category=cmd.category,
        price_cents=cmd.price_cents,
        initial_stock=cmd.initial_stock,
        now=uow.now,
    )
    if await uow.products.sku_exists(sku):
        raise Duplicate(f"a product with SKU {sku} exists already", "sku")
    uow.products.add(product)
    return product


async def _product(uow: UnitOfWork, product_id: str) -> Product:
    product = await uow.products.get(product_id)
    if product is None:
        raise NotFound(f"no product with id {product_id}", "id")
    return product


async def update_product(cmd: UpdateProduct, uow: UnitOfWork) -> Aggregate:
    product = await _product(uow, cmd.product_id)
    product.update_details(
        name=cmd.name,
        description=cmd.description,
        category=cmd.category,
        expected_version=cmd.expected_version,
        now=uow.now,
    )
    return product


async def change_product_price(cmd: ChangeProductPrice, uow: UnitOfWork) -> Aggregate:
    product = await _product(uow, cmd.product_id)
    product.change_price(cmd.price_cents, expected_version=cmd.expected_version, now=uow.now)
    return product


async def restock_product(cmd: RestockProduct, uow: UnitOfWork) -> Aggregate:
    product = await _product(uow, cmd.product_id)
    product.restock(cmd.quantity, now=uow.now)
    return product


async def discontinue_product(cmd: DiscontinueProduct, uow: UnitOfWork) -> Aggregate:
    product = await _product(uow, cmd.product_id)
    product.discontinue(expected_version=cmd.expected_version, now=uow.now)
    return product


HANDLERS: dict[type[Command], Handler] = {
    CreateProduct: create_product,
    UpdateProduct: update_product,
    ChangeProductPrice: change_product_price,
    RestockProduct: restock_product,
    DiscontinueProduct: discontinue_product,
}
