"""Typed events and their stored form: what the outbox holds must read back exactly."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

import domain.handlers  # noqa: F401  (every command's module, so every event type)
from domain import events as ev
from domain.events import DomainEvent, PayloadError, RecordedEvent

ADDRESS = {"line1": "1 Road", "line2": None, "city": "Town", "postalCode": "12345", "country": "DE"}
LINE = {"productId": "p1", "sku": "MUG", "productName": "Mug", "quantity": 2,
        "unitPriceCents": 500, "lineTotalCents": 1000}  # fmt: skip
MOVED = {"productId": "p1", "quantity": 2, "lineTotalCents": 1000}

# One stored form per event type, as the outbox holds them (and as older releases
# wrote them: without the fields added since). Renaming a class or a field breaks
# these, as it would break reading the events already stored.
STORED: list[tuple[str, dict[str, Any]]] = [
    ("ProductCreated", {"sku": "MUG", "name": "Mug", "description": "", "category": "k",
                        "priceCents": 500, "initialStock": 3}),
    ("ProductDetailsUpdated", {"name": "Cup"}),
    ("ProductDetailsUpdated", {"description": "d", "category": "c"}),
    ("ProductPriceChanged", {"priceCents": 700, "previousPriceCents": 500}),
    ("ProductRestocked", {"quantity": 5, "stockOnHand": 8}),
    ("ProductDiscontinued", {}),
    ("CustomerRegistered", {"email": "a@b.org", "name": "Ada", "address": ADDRESS}),
    ("CustomerRenamed", {"name": "Ada L.", "previousName": "Ada"}),
    ("CustomerRenamed", {"name": "Ada L.", "previousName": "Ada", "ordersPlaced": 3}),
    ("CustomerAddressUpdated", {"address": {**ADDRESS, "line2": "Flat 2"}}),
    ("OrderPlaced", {"customerId": "c1", "customerName": "Ada", "customerEmail": "a@b.org",
                     "lines": [LINE], "itemCount": 2, "totalCents": 1000,
                     "shippingAddress": ADDRESS}),
    ("OrderPlaced", {"customerId": "c1", "customerName": "Ada", "customerEmail": "a@b.org",
                     "lines": [LINE], "itemCount": 2, "totalCents": 1000,
                     "shippingAddress": ADDRESS, "customerOrderNumber": 1}),
    ("OrderCancelled", {"reason": "r", "customerId": "c1", "totalCents": 1000,
                        "lines": [MOVED], "customerOrderNumber": 1}),
    ("OrderShipped", {"trackingNumber": "T", "customerId": "c1", "totalCents": 1000,
                      "lines": [MOVED]}),
    ("WishlistItemAdded", {"customerId": "c1", "productId": "p1", "sku": "MUG",
                           "productName": "Mug"}),
    ("WishlistItemRemoved", {"customerId": "c1", "productId": "p1"}),
]  # fmt: skip


@pytest.mark.parametrize(("type_name", "data"), STORED)
def test_a_stored_event_reads_back_exactly_as_it_was_stored(
    type_name: str, data: dict[str, Any]
) -> None:
    event = ev.decode(type_name, data)
    assert event is not None
    assert event.type_name() == type_name
    assert event.to_data() == data


def test_every_event_type_has_a_pinned_stored_form() -> None:
    pinned = {type_name for type_name, _ in STORED}
    shop = {
        name for name, cls in DomainEvent.registry.items() if cls.__module__.startswith("domain.")
    }
    assert shop <= pinned


def test_fields_read_as_attributes_with_nested_payloads_typed() -> None:
    event = ev.decode("OrderPlaced", dict(STORED[11][1]))
    assert isinstance(event, ev.OrderPlaced)
    assert event.lines[0].unit_price_cents == 500
    assert event.shipping_address.postal_code == "12345"
    assert event.customer_order_number == 1


def test_a_field_older_events_lack_is_none_and_not_stored_when_none() -> None:
    renamed = ev.CustomerRenamed(name="B", previous_name="A")
    assert renamed.orders_placed is None
    assert renamed.to_data() == {"name": "B", "previousName": "A"}


def test_an_unknown_type_decodes_to_none() -> None:
    assert ev.decode("SomethingFromTheFuture", {"x": 1}) is None


def test_stored_data_missing_a_field_is_refused_with_its_name() -> None:
    with pytest.raises(PayloadError, match="'quantity'"):
        ev.decode("ProductRestocked", {"stockOnHand": 1})


def test_a_recorded_event_decodes_its_payload_once() -> None:
    recorded = RecordedEvent(1, "e1", "ProductRestocked", "Product", "p1", 2,
                             {"quantity": 5, "stockOnHand": 8}, datetime.now(UTC))  # fmt: skip
    assert recorded.payload == ev.ProductRestocked(quantity=5, stock_on_hand=8)
    assert recorded.payload is recorded.payload
