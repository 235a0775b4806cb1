"""Strawberry types of the contract, built from read-model documents."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, TypeVar

import strawberry

from domain.idempotency import CommandOutcome
from schema.scalars import Version

T = TypeVar("T")


def given(value: T | None) -> T | None:
    """Maps Strawberry's UNSET (argument left out) to ``None``."""
    return None if value is strawberry.UNSET else value


@strawberry.enum
class ErrorCode(Enum):
    VALIDATION_FAILED = "VALIDATION_FAILED"
    NOT_FOUND = "NOT_FOUND"
    DUPLICATE = "DUPLICATE"
    VERSION_CONFLICT = "VERSION_CONFLICT"
    INSUFFICIENT_STOCK = "INSUFFICIENT_STOCK"
    INVALID_STATE = "INVALID_STATE"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"


@strawberry.type
class UserError:
    code: ErrorCode
    message: str
    field: str | None = strawberry.field(
        description=(
            'The input path the error is about, e.g. "lines.2.quantity"; '
            "null when it is about the whole command."
        )
    )


@strawberry.type
class CommandResult:
    success: bool
    id: strawberry.ID | None = strawberry.field(
        description="The aggregate the command created or changed."
    )
    version: Version | None = strawberry.field(
        description="Pass this as minVersion to read your own write."
    )
    aggregate_version: int | None = strawberry.field(
        description="The aggregate's own version after the command (for expectedVersion)."
    )
    errors: list[UserError]

    @classmethod
    def succeeded(cls, outcome: CommandOutcome) -> CommandResult:
        return cls(
            success=True,
            id=None if outcome.id is None else strawberry.ID(outcome.id),
            version=None if outcome.version is None else Version(outcome.version),
            aggregate_version=outcome.aggregate_version,
            errors=[],
        )

    @classmethod
    def failed(cls, errors: list[UserError]) -> CommandResult:
        return cls(success=False, id=None, version=None, aggregate_version=None, errors=errors)


@strawberry.enum
class ProductStatus(Enum):
    ACTIVE = "ACTIVE"
    DISCONTINUED = "DISCONTINUED"


@strawberry.type
class Product:
    id: strawberry.ID
    sku: str
    name: str
    description: str
    category: str
    price_cents: int
    status: ProductStatus
    stock_on_hand: int
    stock_reserved: int
    stock_available: int
    units_sold: int
    created_at: datetime
    updated_at: datetime
    version: Version

    @classmethod
    def from_document(cls, d: dict[str, Any]) -> Product:
        return cls(
            id=strawberry.ID(d["_id"]),
            sku=d["sku"],
            name=d["name"],
            description=d["description"],
            category=d["category"],
            price_cents=d["priceCents"],
            status=ProductStatus(d["status"]),
            stock_on_hand=d["stockOnHand"],
            stock_reserved=d["stockReserved"],
            stock_available=d["stockAvailable"],
            units_sold=d["unitsSold"],
            created_at=d["createdAt"],
            updated_at=d["updatedAt"],
            version=Version(d["version"]),
        )


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class ProductEdge:
    cursor: str
    node: Product


@strawberry.type
class ProductConnection:
    edges: list[ProductEdge]
    page_info: PageInfo
    total_count: int


@strawberry.input
class ProductFilter:
    search: str | None = strawberry.field(
        default=strawberry.UNSET, description="Case-insensitive match on name, sku and description."
    )
    category: str | None = strawberry.UNSET
    status: ProductStatus | None = strawberry.UNSET
    min_price_cents: int | None = strawberry.UNSET
    max_price_cents: int | None = strawberry.UNSET
    in_stock: bool | None = strawberry.UNSET


@strawberry.enum
class ProductSort(Enum):
    NAME_ASC = "NAME_ASC"
    PRICE_ASC = "PRICE_ASC"
    PRICE_DESC = "PRICE_DESC"
    NEWEST = "NEWEST"
    BEST_SELLING = "BEST_SELLING"


@strawberry.type
class ProjectionStatus:
    name: str
    checkpoint: Version = strawberry.field(description="Last outbox position applied.")
    head_version: Version = strawberry.field(description="Last outbox position written.")
    lag: int
    state: str = strawberry.field(
        description="RUNNING, CATCHING_UP, REBUILDING, STALLED or STOPPED."
    )
    last_error: str | None
    updated_at: datetime | None
