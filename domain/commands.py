"""Commands: what a client asks the shop to do, in the imperative.

Plain frozen dataclasses; their fields (with the command's name) are what an
idempotency key is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass


class Command:
    """Marker base class of every command."""


@dataclass(frozen=True, slots=True)
class CreateProduct(Command):
    sku: str
    name: str
    category: str
    price_cents: int
    description: str = ""
    initial_stock: int = 0


@dataclass(frozen=True, slots=True)
class UpdateProduct(Command):
    product_id: str
    name: str | None = None
    description: str | None = None
    category: str | None = None
    expected_version: int | None = None


@dataclass(frozen=True, slots=True)
class ChangeProductPrice(Command):
    product_id: str
    price_cents: int
    expected_version: int | None = None


@dataclass(frozen=True, slots=True)
class RestockProduct(Command):
    product_id: str
    quantity: int


@dataclass(frozen=True, slots=True)
class DiscontinueProduct(Command):
    product_id: str
    expected_version: int | None = None


@dataclass(frozen=True, slots=True)
class AddressData:
    line1: str
    city: str
    postal_code: str
    country: str
    line2: str | None = None


@dataclass(frozen=True, slots=True)
class RegisterCustomer(Command):
    email: str
    name: str
    address: AddressData


@dataclass(frozen=True, slots=True)
class RenameCustomer(Command):
    customer_id: str
    name: str
    expected_version: int | None = None


@dataclass(frozen=True, slots=True)
class UpdateCustomerAddress(Command):
    customer_id: str
    address: AddressData
    expected_version: int | None = None


@dataclass(frozen=True, slots=True)
class OrderLineRequest:
    product_id: str
    quantity: int


@dataclass(frozen=True, slots=True)
class PlaceOrder(Command):
    customer_id: str
    lines: tuple[OrderLineRequest, ...]
    shipping_address: AddressData | None = None


@dataclass(frozen=True, slots=True)
class CancelOrder(Command):
    order_id: str
    reason: str
    expected_version: int | None = None


@dataclass(frozen=True, slots=True)
class ShipOrder(Command):
    order_id: str
    tracking_number: str
    expected_version: int | None = None
