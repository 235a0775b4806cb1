"""Strawberry types of the contract, built from read-model documents."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, TypeVar

import strawberry
from strawberry.scalars import JSON

from domain.idempotency import CommandOutcome
from schema.scalars import BigInt, Version

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
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    UNAVAILABLE = "UNAVAILABLE"
    RATE_LIMITED = "RATE_LIMITED"


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


@strawberry.type
class Address:
    line1: str
    line2: str | None
    city: str
    postal_code: str
    country: str

    @classmethod
    def from_document(cls, d: dict[str, Any]) -> Address:
        return cls(
            line1=d["line1"],
            line2=d.get("line2"),
            city=d["city"],
            postal_code=d["postalCode"],
            country=d["country"],
        )


@strawberry.type
class Customer:
    id: strawberry.ID
    email: str
    name: str
    address: Address
    order_count: int
    lifetime_value_cents: BigInt
    registered_at: datetime
    version: Version

    @classmethod
    def from_document(cls, d: dict[str, Any]) -> Customer:
        return cls(
            id=strawberry.ID(d["_id"]),
            email=d["email"],
            name=d["name"],
            address=Address.from_document(d["address"]),
            order_count=d["orderCount"],
            lifetime_value_cents=BigInt(d["lifetimeValueCents"]),
            registered_at=d["registeredAt"],
            version=Version(d["version"]),
        )


@strawberry.enum
class OrderStatus(Enum):
    PLACED = "PLACED"
    SHIPPED = "SHIPPED"
    CANCELLED = "CANCELLED"


@strawberry.type
class OrderCustomer:
    id: strawberry.ID
    name: str
    email: str


@strawberry.type
class OrderLine:
    product_id: strawberry.ID
    sku: str
    product_name: str = strawberry.field(
        description="The product's name when the order was placed."
    )
    quantity: int
    unit_price_cents: int
    line_total_cents: BigInt


@strawberry.type
class Order:
    id: strawberry.ID
    customer: OrderCustomer = strawberry.field(
        description="Denormalised: follows renames of the customer."
    )
    status: OrderStatus
    lines: list[OrderLine]
    item_count: int
    total_cents: BigInt
    shipping_address: Address
    placed_at: datetime
    shipped_at: datetime | None
    tracking_number: str | None
    cancelled_at: datetime | None
    cancel_reason: str | None
    version: Version

    @classmethod
    def from_document(cls, d: dict[str, Any]) -> Order:
        c = d["customer"]
        return cls(
            id=strawberry.ID(d["_id"]),
            customer=OrderCustomer(id=strawberry.ID(c["id"]), name=c["name"], email=c["email"]),
            status=OrderStatus(d["status"]),
            lines=[
                OrderLine(
                    product_id=strawberry.ID(line["productId"]),
                    sku=line["sku"],
                    product_name=line["productName"],
                    quantity=line["quantity"],
                    unit_price_cents=line["unitPriceCents"],
                    line_total_cents=BigInt(line["lineTotalCents"]),
                )
                for line in d["lines"]
            ],
            item_count=d["itemCount"],
            total_cents=BigInt(d["totalCents"]),
            shipping_address=Address.from_document(d["shippingAddress"]),
            placed_at=d["placedAt"],
            shipped_at=d.get("shippedAt"),
            tracking_number=d.get("trackingNumber"),
            cancelled_at=d.get("cancelledAt"),
            cancel_reason=d.get("cancelReason"),
            version=Version(d["version"]),
        )


@strawberry.type
class OrderEdge:
    cursor: str
    node: Order


@strawberry.type
class OrderConnection:
    edges: list[OrderEdge]
    page_info: PageInfo
    total_count: int


@strawberry.type
class ProductSales:
    product_id: strawberry.ID
    sku: str
    name: str
    units_sold: int
    revenue_cents: BigInt
    order_count: int
    version: Version

    @classmethod
    def from_document(cls, d: dict[str, Any]) -> ProductSales:
        return cls(
            product_id=strawberry.ID(d["_id"]),
            sku=d["sku"],
            name=d["name"],
            units_sold=d["unitsSold"],
            revenue_cents=BigInt(d["revenueCents"]),
            order_count=d["orderCount"],
            version=Version(d["version"]),
        )


@strawberry.type
class Dashboard:
    product_count: int
    customer_count: int
    order_count: int
    open_order_count: int
    shipped_order_count: int
    cancelled_order_count: int
    revenue_cents: BigInt = strawberry.field(
        description="Sum of totals of orders that are not cancelled."
    )
    average_order_value_cents: BigInt
    low_stock_count: int = strawberry.field(
        description="Active products whose stockAvailable is below the low-stock threshold."
    )
    version: Version

    @classmethod
    def from_document(cls, d: dict[str, Any]) -> Dashboard:
        return cls(
            product_count=d["productCount"],
            customer_count=d["customerCount"],
            order_count=d["orderCount"],
            open_order_count=d["openOrderCount"],
            shipped_order_count=d["shippedOrderCount"],
            cancelled_order_count=d["cancelledOrderCount"],
            revenue_cents=BigInt(d["revenueCents"]),
            average_order_value_cents=BigInt(d["averageOrderValueCents"]),
            low_stock_count=d["lowStockCount"],
            version=Version(d["version"]),
        )


@strawberry.type
class DomainEvent:
    version: Version
    type: str
    aggregate_type: str
    aggregate_id: strawberry.ID
    aggregate_version: int
    occurred_at: datetime
    data: JSON

    @classmethod
    def from_document(cls, d: dict[str, Any]) -> DomainEvent:
        return cls(
            version=Version(d["_id"]),
            type=d["type"],
            aggregate_type=d["aggregateType"],
            aggregate_id=strawberry.ID(d["aggregateId"]),
            aggregate_version=d["aggregateVersion"],
            occurred_at=d["occurredAt"],
            data=d["data"],
        )


@strawberry.type
class EventEdge:
    cursor: str
    node: DomainEvent


@strawberry.type
class EventConnection:
    edges: list[EventEdge]
    page_info: PageInfo
