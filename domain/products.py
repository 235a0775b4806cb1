"""The Product aggregate: catalogue details, price, stock and status."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from domain import events, validation
from domain.aggregate import Aggregate
from domain.errors import InvalidState, Problems, ValidationFailed

SKU = re.compile(r"[A-Z0-9_-]{1,64}")
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
MAX_PRICE_CENTS = 100_000_000
MAX_INITIAL_STOCK = 1_000_000
MAX_RESTOCK = 1_000_000
# stockOnHand is a 32-bit integer in the contract (GraphQL Int) and on PostgreSQL.
MAX_STOCK_ON_HAND = 2_147_483_647


class ProductStatus(StrEnum):
    ACTIVE = "ACTIVE"
    DISCONTINUED = "DISCONTINUED"


def normalise_sku(sku: str) -> str:
    """SKUs are case-insensitive: stored and looked up upper-cased.

    Only ASCII letters are upper-cased: ``str.upper`` turns ``ß`` into ``SS`` and
    ``ﬀ`` into ``FF``, which would slip past the ``A-Z`` check afterwards.
    """
    sku = sku.strip()
    return sku.upper() if sku.isascii() else sku.translate(_ASCII_UPPER)


def check_details(
    problems: Problems, name: str | None, description: str | None, category: str | None
) -> None:
    if name is not None:
        problems.add(validation.text_length(name, "name", 1, 200))
    if description is not None:
        problems.add(validation.max_length(description, "description", 5000))
    if category is not None:
        problems.add(validation.text_length(category, "category", 1, 100))


def check_update(
    problems: Problems, name: str | None, description: str | None, category: str | None
) -> None:
    if name is None and description is None and category is None:
        problems.add(ValidationFailed("give at least one of name, description and category"))
    check_details(problems, name, description, category)


def check_price(problems: Problems, price_cents: int) -> None:
    problems.add(validation.int_range(price_cents, "priceCents", 0, MAX_PRICE_CENTS))


def check_restock(problems: Problems, quantity: int) -> bool:
    """Checks the quantity alone; whether it is valid."""
    problem = validation.int_range(quantity, "quantity", 1, MAX_RESTOCK)
    problems.add(problem)
    return problem is None


@dataclass(kw_only=True)
class Product(Aggregate):
    aggregate_type = "Product"

    sku: str
    name: str
    description: str
    category: str
    price_cents: int
    status: ProductStatus = ProductStatus.ACTIVE
    stock_on_hand: int = 0
    stock_reserved: int = 0
    created_at: datetime
    updated_at: datetime

    @property
    def stock_available(self) -> int:
        return self.stock_on_hand - self.stock_reserved

    @classmethod
    def create(
        cls,
        *,
        id: str,
        sku: str,
        name: str,
        description: str,
        category: str,
        price_cents: int,
        initial_stock: int,
        now: datetime,
        problems: Problems | None = None,
    ) -> Product:
        """Checks every input together, reported with ``problems`` the handler found
        already (a SKU taken)."""
        problems = Problems() if problems is None else problems
        problems.add(validation.pattern(sku, "sku", SKU, "1-64 characters of A-Z, 0-9, - and _"))
        check_details(problems, name, description, category)
        check_price(problems, price_cents)
        problems.add(validation.int_range(initial_stock, "initialStock", 0, MAX_INITIAL_STOCK))
        problems.raise_if_any()
        product = cls(
            id=id,
            sku=sku,
            name=name.strip(),
            description=description,
            category=category.strip(),
            price_cents=price_cents,
            stock_on_hand=initial_stock,
            created_at=now,
            updated_at=now,
        )
        product.raise_event(
            events.ProductCreated(
                sku=product.sku,
                name=product.name,
                description=product.description,
                category=product.category,
                price_cents=price_cents,
                initial_stock=initial_stock,
            )
        )
        return product

    def update_details(
        self,
        *,
        name: str | None,
        description: str | None,
        category: str | None,
        expected_version: int | None,
        now: datetime,
    ) -> None:
        """Changes the given fields; giving only the current values is a no-op."""
        problems = Problems()
        problems.add(self.version_conflict(expected_version))
        check_update(problems, name, description, category)
        problems.raise_if_any()
        wanted = {
            "name": None if name is None else name.strip(),
            "description": description,
            "category": None if category is None else category.strip(),
        }
        changes = {k: v for k, v in wanted.items() if v is not None and getattr(self, k) != v}
        if not changes:
            return
        for key, value in changes.items():
            setattr(self, key, value)
        self.updated_at = now
        self.raise_event(events.ProductDetailsUpdated(**changes))

    def change_price(
        self, price_cents: int, *, expected_version: int | None, now: datetime
    ) -> None:
        """A price equal to the current one is a no-op: no event."""
        problems = Problems()
        problems.add(self.version_conflict(expected_version))
        check_price(problems, price_cents)
        problems.raise_if_any()
        if price_cents == self.price_cents:
            return
        previous, self.price_cents, self.updated_at = self.price_cents, price_cents, now
        self.raise_event(
            events.ProductPriceChanged(price_cents=price_cents, previous_price_cents=previous)
        )

    def restock(self, quantity: int, *, now: datetime) -> None:
        problems = Problems()
        if check_restock(problems, quantity) and self.stock_on_hand + quantity > MAX_STOCK_ON_HAND:
            problems.add(
                ValidationFailed(
                    f"quantity would take stockOnHand past {MAX_STOCK_ON_HAND:,}", "quantity"
                )
            )
        problems.add(self.inactive("restocked"))
        problems.raise_if_any()
        self.stock_on_hand += quantity
        self.updated_at = now
        self.raise_event(
            events.ProductRestocked(quantity=quantity, stock_on_hand=self.stock_on_hand)
        )

    def discontinue(self, *, expected_version: int | None, now: datetime) -> None:
        problems = Problems()
        problems.add(self.version_conflict(expected_version))
        problems.add(self.inactive("discontinued again"))
        problems.raise_if_any()
        self.status = ProductStatus.DISCONTINUED
        self.updated_at = now
        self.raise_event(events.ProductDiscontinued())

    def inactive(self, action: str) -> InvalidState | None:
        if self.status is ProductStatus.ACTIVE:
            return None
        return InvalidState(f"product {self.sku} is discontinued and cannot be {action}")
