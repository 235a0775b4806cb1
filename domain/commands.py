"""Commands: what a client asks the shop to do, in the imperative.

Plain frozen dataclasses; their fields (with the command's name) are what an
idempotency key is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from domain.validation import INPUT_NAME


class Command:
    """Marker base class of every command."""


# The metadata of a field given as the mutation's ``id`` argument: problems with it
# name the field ``id``.
ID_ARGUMENT = {INPUT_NAME: "id"}


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
    product_id: str = field(metadata=ID_ARGUMENT)
    name: str | None = None
    description: str | None = None
    category: str | None = None
    expected_version: int | None = None


@dataclass(frozen=True, slots=True)
class ChangeProductPrice(Command):
    product_id: str = field(metadata=ID_ARGUMENT)
    price_cents: int
    expected_version: int | None = None


@dataclass(frozen=True, slots=True)
class RestockProduct(Command):
    product_id: str = field(metadata=ID_ARGUMENT)
    quantity: int


@dataclass(frozen=True, slots=True)
class DiscontinueProduct(Command):
    product_id: str = field(metadata=ID_ARGUMENT)
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
    customer_id: str = field(metadata=ID_ARGUMENT)
    name: str
    expected_version: int | None = None


@dataclass(frozen=True, slots=True)
class UpdateCustomerAddress(Command):
    customer_id: str = field(metadata=ID_ARGUMENT)
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
    order_id: str = field(metadata=ID_ARGUMENT)
    reason: str
    expected_version: int | None = None
    # Cancelled by this customer: another customer's order answers like a missing one.
    customer_id: str | None = None


@dataclass(frozen=True, slots=True)
class ShipOrder(Command):
    order_id: str = field(metadata=ID_ARGUMENT)
    tracking_number: str
    expected_version: int | None = None
