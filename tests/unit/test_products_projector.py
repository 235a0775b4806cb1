"""The products projector is pure and guards every change by the document's version."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo import InsertOne, UpdateOne

from domain.events import RecordedEvent
from projections.products import ProductsProjection

AT = datetime(2026, 1, 1, tzinfo=UTC)


def event(position: int, type_: str, **data: Any) -> RecordedEvent:
    return RecordedEvent(position, f"e{position}", type_, "Product", "p1", position, data, AT)


CREATED = event(
    1,
    "ProductCreated",
    sku="MUG-1",
    name="Blue Mug",
    description="",
    category="kitchen",
    priceCents=1299,
    initialStock=3,
)


def operation(e: RecordedEvent) -> Any:
    [write] = ProductsProjection().project(e)
    assert write.collection == "products"
    assert write.key == "p1"
    return write.operation


def test_creation_is_a_plain_insert_of_the_whole_document() -> None:
    op = operation(CREATED)
    assert isinstance(op, InsertOne)
    document = op._doc
    assert document["_id"] == "p1"
    assert document["version"] == 1
    assert document["stockAvailable"] == 3
    assert document["nameKey"] == "blue mug"


def test_every_later_change_is_guarded_by_its_position() -> None:
    changes = [
        event(5, "ProductDetailsUpdated", name="Red Mug"),
        event(6, "ProductPriceChanged", priceCents=1500, previousPriceCents=1299),
        event(7, "ProductRestocked", quantity=4, stockOnHand=7),
        event(8, "ProductDiscontinued"),
    ]
    for e in changes:
        op = operation(e)
        assert isinstance(op, UpdateOne)
        assert op._filter == {"_id": "p1", "version": {"$lt": e.position}}
        assert op._doc["$set"]["version"] == e.position
        assert not op._upsert


def test_renaming_keeps_the_sort_key_in_step() -> None:
    op = operation(event(5, "ProductDetailsUpdated", name="Red Mug"))
    assert op._doc["$set"]["nameKey"] == "red mug"


def test_restock_increments_on_hand_and_available_together() -> None:
    op = operation(event(7, "ProductRestocked", quantity=4, stockOnHand=7))
    assert op._doc["$inc"] == {"stockOnHand": 4, "stockAvailable": 4}


def test_unknown_events_produce_no_writes() -> None:
    assert ProductsProjection().project(event(9, "SomethingElseHappened")) == []
