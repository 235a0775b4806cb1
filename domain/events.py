"""Domain events: facts in the past tense, appended to the outbox.

Each event type is a frozen dataclass carrying its payload, so a projector reads
``event.quantity`` and a misspelt or renamed field is a type error, not a
``KeyError`` in the relay. Subclassing :class:`DomainEvent` registers a type by its
class name, which is the name stored in the outbox's ``type`` column.

**The stored form.** The outbox keeps an event as its type name and a JSON object
(``data``) whose keys are the fields' names in camelCase (``priceCents``), the
contract's words, used from GraphQL through the outbox to the Mongo documents.
:meth:`DomainEvent.to_data` writes that object and :meth:`DomainEvent.from_data`
reads it back; ``from_data(d).to_data() == d`` for every event this release stores
(``tests/unit/test_events.py`` pins each type's stored form), and keys that no field
declares are ignored (``ordersPlaced``, which some older ``OrderCancelled`` and
``OrderShipped`` events carry). So the class and
field names *are* the storage schema: renaming one changes what new events are
stored as, and old events no longer decode, which that test catches. A field that
older events lack is declared with :func:`absent_before` (``None``, and left out of
the stored object when ``None``).

Reading the log, :attr:`RecordedEvent.payload` decodes an event once, on first use:
a projection that ignores a type never decodes it, and an event of a type this
process does not know decodes to ``None`` (projections skip it and still move
their checkpoint).
"""

from __future__ import annotations

import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from datetime import datetime
from functools import cached_property
from types import NoneType, UnionType
from typing import Any, ClassVar, Self

_ABSENT_WHEN_NONE = "absent_when_none"


def absent_before() -> Any:
    """A field events stored by older releases lack: ``None`` then, and not stored when
    ``None`` (so such an event still reads back exactly as it was stored)."""
    return field(default=None, metadata={_ABSENT_WHEN_NONE: True})


def camel(name: str) -> str:
    """``price_cents`` → ``priceCents``: a field's key in the stored form."""
    first, *rest = name.split("_")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


def to_data(value: Any) -> Any:
    """A payload (or a value in one) as JSON-ready data: dataclasses become camelCase
    objects, tuples become lists."""
    if type(value) in _AS_THEY_ARE:
        return value
    keys = _KEYS.get(type(value))
    if keys is None and is_dataclass(value) and not isinstance(value, type):
        keys = _KEYS[type(value)] = [
            (f.name, camel(f.name), bool(f.metadata.get(_ABSENT_WHEN_NONE))) for f in fields(value)
        ]
    if keys is not None:
        return {
            key: to_data(item)
            for name, key, absent_when_none in keys
            if (item := getattr(value, name)) is not None or not absent_when_none
        }
    if isinstance(value, tuple | list):
        return [to_data(item) for item in value]
    return value


# Each dataclass's fields as (name, stored key, left out when None), found once: every
# command encodes its events, and looking them up each time was most of the work.
_KEYS: dict[type, list[tuple[str, str, bool]]] = {}
_AS_THEY_ARE = frozenset({str, int, bool, float, NoneType})


class PayloadError(ValueError):
    """Stored data that does not fit its event type."""


Decoder = typing.Callable[[Any], Any]


def _decoder(hint: Any) -> Decoder:
    """How to turn stored data into a value of the type ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(hint, type) and is_dataclass(hint):
        return lambda data: _decode(hint, data)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = _decoder(args[0])
        return lambda data: tuple(item(each) for each in data)
    if origin in (UnionType, typing.Union) and NoneType in args:
        (inner,) = [a for a in args if a is not NoneType]
        decode = _decoder(inner)
        return lambda data: None if data is None else decode(data)
    return lambda data: data  # int, str, bool, dict[str, Any]: JSON gives them as they are


_FIELDS: dict[type, list[tuple[str, str, Decoder, bool]]] = {}


def _fields_of(cls: type) -> list[tuple[str, str, Decoder, bool]]:
    """Each field's name, stored key, decoder and whether it is required (cached)."""
    known = _FIELDS.get(cls)
    if known is None:
        hints = typing.get_type_hints(cls)
        known = _FIELDS[cls] = [
            (f.name, camel(f.name), _decoder(hints[f.name]), f.default is MISSING)
            for f in fields(cls)
            if f.init
        ]
    return known


T = typing.TypeVar("T")


def from_data(cls: type[T], data: Any) -> T:
    """The payload (or part of one) of dataclass type ``cls`` that :func:`to_data` stored."""
    decoded: T = _decode(cls, data)
    return decoded


def _decode(cls: type[Any], data: Any) -> Any:
    if not isinstance(data, dict):
        raise PayloadError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    values = {}
    for name, key, decode, required in _fields_of(cls):
        if key in data:
            values[name] = decode(data[key])
        elif required:
            raise PayloadError(f"{cls.__name__}: the stored data has no {key!r}")
    # Keys it does not know (written by a newer release) are left out.
    return cls(**values)


class DomainEvent:
    """The base of every event type; a subclass registers itself under its class name."""

    registry: ClassVar[dict[str, type[DomainEvent]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # dataclass(slots=True) builds the class again: the later one is the final one.
        DomainEvent.registry[cls.__name__] = cls

    @classmethod
    def type_name(cls) -> str:
        return cls.__name__

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = to_data(self)
        return data

    @classmethod
    def from_data(cls, data: Any) -> Self:
        decoded: Self = _decode(cls, data)
        return decoded


def decode(type_name: str, data: Any) -> DomainEvent | None:
    """The typed event stored as ``type_name`` and ``data``; ``None`` for a type no module
    of this process defines (read models that need it import it)."""
    cls = DomainEvent.registry.get(type_name)
    return None if cls is None else cls.from_data(data)


@dataclass(frozen=True, slots=True)
class Event:
    """An event raised by an aggregate, not yet stored: its type name and stored form."""

    type: str
    aggregate_type: str
    aggregate_id: str
    aggregate_version: int
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordedEvent:
    """An event as stored in the outbox, with its global ``position``.

    ``data`` is the payload as stored (the audit trail shows it as it is);
    :attr:`payload` is the same, typed.
    """

    position: int
    event_id: str
    type: str
    aggregate_type: str
    aggregate_id: str
    aggregate_version: int
    data: dict[str, Any]
    occurred_at: datetime
    metadata: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def payload(self) -> DomainEvent | None:
        """The typed event, decoded on first use (:func:`decode`)."""
        return decode(self.type, self.data)


# --- the payloads of several events ---------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PostalAddress:
    line1: str
    line2: str | None = None
    city: str
    postal_code: str
    country: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderedLine:
    """A line as ordered: the product's SKU, name and price at that moment."""

    product_id: str
    sku: str
    product_name: str
    quantity: int
    unit_price_cents: int
    line_total_cents: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LineMovement:
    """What cancelling or shipping an order's line moves, so projections need no other state."""

    product_id: str
    quantity: int
    line_total_cents: int


# --- products ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ProductCreated(DomainEvent):
    sku: str
    name: str
    description: str
    category: str
    price_cents: int
    initial_stock: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ProductDetailsUpdated(DomainEvent):
    """Only the fields that changed are given."""

    name: str | None = absent_before()
    description: str | None = absent_before()
    category: str | None = absent_before()


@dataclass(frozen=True, slots=True, kw_only=True)
class ProductPriceChanged(DomainEvent):
    price_cents: int
    previous_price_cents: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ProductRestocked(DomainEvent):
    quantity: int
    stock_on_hand: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ProductDiscontinued(DomainEvent):
    pass


# --- customers --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CustomerRegistered(DomainEvent):
    email: str
    name: str
    address: PostalAddress


@dataclass(frozen=True, slots=True, kw_only=True)
class CustomerRenamed(DomainEvent):
    name: str
    previous_name: str
    orders_placed: int | None = absent_before()
    """How many orders the customer had placed, so read models know which to rename."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CustomerAddressUpdated(DomainEvent):
    address: PostalAddress


# --- orders -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderPlaced(DomainEvent):
    customer_id: str
    customer_name: str
    customer_email: str
    lines: tuple[OrderedLine, ...]
    item_count: int
    total_cents: int
    shipping_address: PostalAddress
    customer_order_number: int | None = absent_before()
    """The customer's how-manieth order (``domain.orders.Order.number``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderCancelled(DomainEvent):
    reason: str
    customer_id: str
    total_cents: int
    lines: tuple[LineMovement, ...]
    customer_order_number: int | None = absent_before()


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderShipped(DomainEvent):
    tracking_number: str
    customer_id: str
    total_cents: int
    lines: tuple[LineMovement, ...]
    customer_order_number: int | None = absent_before()


# One name per event type, for code that tells types apart by their stored name.
PRODUCT_CREATED = ProductCreated.type_name()
PRODUCT_DETAILS_UPDATED = ProductDetailsUpdated.type_name()
PRODUCT_PRICE_CHANGED = ProductPriceChanged.type_name()
PRODUCT_RESTOCKED = ProductRestocked.type_name()
PRODUCT_DISCONTINUED = ProductDiscontinued.type_name()
CUSTOMER_REGISTERED = CustomerRegistered.type_name()
CUSTOMER_RENAMED = CustomerRenamed.type_name()
CUSTOMER_ADDRESS_UPDATED = CustomerAddressUpdated.type_name()
ORDER_PLACED = OrderPlaced.type_name()
ORDER_CANCELLED = OrderCancelled.type_name()
ORDER_SHIPPED = OrderShipped.type_name()
