"""Domain events: facts in the past tense, appended to the outbox.

An event's ``data`` uses the contract's camelCase names, so the same words are
used from GraphQL through the outbox to the Mongo documents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    """An event raised by an aggregate, not yet stored."""

    type: str
    aggregate_type: str
    aggregate_id: str
    aggregate_version: int
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as stored in the outbox, with its global ``position``."""

    position: int
    event_id: str
    type: str
    aggregate_type: str
    aggregate_id: str
    aggregate_version: int
    data: dict[str, Any]
    occurred_at: datetime
    metadata: dict[str, Any] = field(default_factory=dict)


# One name per event type, so projections never spell one by hand.
PRODUCT_CREATED = "ProductCreated"
PRODUCT_DETAILS_UPDATED = "ProductDetailsUpdated"
PRODUCT_PRICE_CHANGED = "ProductPriceChanged"
PRODUCT_RESTOCKED = "ProductRestocked"
PRODUCT_DISCONTINUED = "ProductDiscontinued"
CUSTOMER_REGISTERED = "CustomerRegistered"
CUSTOMER_RENAMED = "CustomerRenamed"
CUSTOMER_ADDRESS_UPDATED = "CustomerAddressUpdated"
ORDER_PLACED = "OrderPlaced"
ORDER_CANCELLED = "OrderCancelled"
ORDER_SHIPPED = "OrderShipped"
