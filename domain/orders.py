"""The Order aggregate: lines priced by the server, and the PLACED → SHIPPED | CANCELLED life."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from domain import events, validation
from domain.aggregate import Aggregate
from domain.commands import OrderLineRequest
from domain.customers import Address, Customer
from domain.errors import InvalidState, Problems, ValidationFailed

MAX_LINES = 100
MAX_QUANTITY = 1_000


class OrderStatus(StrEnum):
    PLACED = "PLACED"
    SHIPPED = "SHIPPED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True, slots=True)
class OrderLine:
    product_id: str
    sku: str
    product_name: str
    quantity: int
    unit_price_cents: int

    @property
    def line_total_cents(self) -> int:
        return self.quantity * self.unit_price_cents

    def to_payload(self) -> events.OrderedLine:
        return events.OrderedLine(
            product_id=self.product_id,
            sku=self.sku,
            product_name=self.product_name,
            quantity=self.quantity,
            unit_price_cents=self.unit_price_cents,
            line_total_cents=self.line_total_cents,
        )


def check_lines(problems: Problems, lines: Sequence[OrderLineRequest]) -> set[int]:
    """Checks the shape of the requested lines; the indexes whose quantity is valid."""
    if not 1 <= len(lines) <= MAX_LINES:
        problems.add(ValidationFailed(f"an order has 1 to {MAX_LINES} lines", "lines"))
    valid_quantity = set()
    seen: set[str] = set()
    for i, line in enumerate(lines):
        quantity_problem = validation.int_range(
            line.quantity, f"lines.{i}.quantity", 1, MAX_QUANTITY
        )
        problems.add(quantity_problem)
        if quantity_problem is None:
            valid_quantity.add(i)
        if line.product_id in seen:
            problems.add(
                ValidationFailed(
                    "the same product is on another line already", f"lines.{i}.productId"
                )
            )
        seen.add(line.product_id)
    return valid_quantity


def check_reason(problems: Problems, reason: str) -> None:
    problems.add(validation.text_length(reason, "reason", 1, 500))


def check_tracking_number(problems: Problems, tracking_number: str) -> None:
    problems.add(validation.text_length(tracking_number, "trackingNumber", 1, 100))


@dataclass(kw_only=True)
class Order(Aggregate):
    aggregate_type = "Order"

    customer_id: str
    status: OrderStatus = OrderStatus.PLACED
    lines: list[OrderLine] = field(default_factory=list)
    shipping_address: Address
    placed_at: datetime
    shipped_at: datetime | None = None
    tracking_number: str | None = None
    cancelled_at: datetime | None = None
    cancel_reason: str | None = None
    number: int | None = None
    """The customer's how-manieth order (1 for the first), as its OrderPlaced event said;
    None for orders placed before events carried it. Read models file orders by it
    (``projections.history``), so every event of the order repeats it."""

    @property
    def total_cents(self) -> int:
        return sum(line.line_total_cents for line in self.lines)

    @property
    def item_count(self) -> int:
        return sum(line.quantity for line in self.lines)

    @classmethod
    def place(
        cls,
        *,
        id: str,
        customer: Customer,
        lines: list[OrderLine],
        shipping_address: Address,
        now: datetime,
        number: int | None = None,
    ) -> Order:
        order = cls(
            id=id,
            customer_id=customer.id,
            lines=lines,
            shipping_address=shipping_address,
            placed_at=now,
            number=number,
        )
        order.raise_event(
            events.OrderPlaced(
                customer_id=customer.id,
                customer_name=customer.name,
                customer_email=customer.email,
                lines=tuple(line.to_payload() for line in lines),
                item_count=order.item_count,
                total_cents=order.total_cents,
                shipping_address=shipping_address.to_payload(),
                customer_order_number=number,
            )
        )
        return order

    def cancel(self, reason: str, *, expected_version: int | None, now: datetime) -> None:
        problems = Problems()
        problems.add(self.version_conflict(expected_version))
        check_reason(problems, reason)
        problems.add(self._not_placed("cancelled"))
        problems.raise_if_any()
        reason = reason.strip()
        self.status, self.cancelled_at, self.cancel_reason = OrderStatus.CANCELLED, now, reason
        self.raise_event(
            events.OrderCancelled(
                reason=reason,
                customer_id=self.customer_id,
                total_cents=self.total_cents,
                lines=self._line_movements(),
                customer_order_number=self.number,
            )
        )

    def ship(self, tracking_number: str, *, expected_version: int | None, now: datetime) -> None:
        problems = Problems()
        problems.add(self.version_conflict(expected_version))
        check_tracking_number(problems, tracking_number)
        problems.add(self._not_placed("shipped"))
        problems.raise_if_any()
        self.status, self.shipped_at = OrderStatus.SHIPPED, now
        self.tracking_number = tracking_number.strip()
        self.raise_event(
            events.OrderShipped(
                tracking_number=self.tracking_number,
                customer_id=self.customer_id,
                total_cents=self.total_cents,
                lines=self._line_movements(),
                customer_order_number=self.number,
            )
        )

    def _line_movements(self) -> tuple[events.LineMovement, ...]:
        return tuple(
            events.LineMovement(
                product_id=line.product_id,
                quantity=line.quantity,
                line_total_cents=line.line_total_cents,
            )
            for line in self.lines
        )

    def _not_placed(self, action: str) -> InvalidState | None:
        if self.status is OrderStatus.PLACED:
            return None
        return InvalidState(f"order {self.id} is {self.status.value} and cannot be {action}")
