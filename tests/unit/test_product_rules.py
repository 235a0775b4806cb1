"""Every product rule of RULES.md, on the aggregate alone."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from domain.errors import DomainError, InvalidState, Rejected, ValidationFailed, VersionConflict
from domain.products import Product, ProductStatus, normalise_sku

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LATER = datetime(2026, 1, 2, tzinfo=UTC)


def create(**overrides: Any) -> Product:
    fields: dict[str, Any] = {
        "id": "p1",
        "sku": "MUG-1",
        "name": "Mug",
        "description": "",
        "category": "kitchen",
        "price_cents": 1299,
        "initial_stock": 5,
        "now": NOW,
    }
    return Product.create(**{**fields, **overrides})


def problems(error: DomainError) -> set[tuple[str, str | None]]:
    return {(p.code, p.field) for p in error.problems}


def test_created_product_raises_product_created_with_its_details() -> None:
    product = create()
    [event] = product.events
    assert event.type == "ProductCreated"
    assert (event.aggregate_id, event.aggregate_version) == ("p1", 1)
    assert event.data == {
        "sku": "MUG-1",
        "name": "Mug",
        "description": "",
        "category": "kitchen",
        "priceCents": 1299,
        "initialStock": 5,
    }
    assert product.stock_available == 5
    assert product.status is ProductStatus.ACTIVE


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        ("sku", "", "sku"),
        ("sku", "A" * 65, "sku"),
        ("sku", "MUG 1", "sku"),
        ("sku", "MUG.1", "sku"),
        ("name", "", "name"),
        ("name", "   ", "name"),
        ("name", "n" * 201, "name"),
        ("category", "", "category"),
        ("category", "c" * 101, "category"),
        ("description", "d" * 5001, "description"),
        ("price_cents", -1, "priceCents"),
        ("price_cents", 100_000_001, "priceCents"),
        ("initial_stock", -1, "initialStock"),
        ("initial_stock", 1_000_001, "initialStock"),
    ],
)
def test_create_rejects_each_invalid_input(field: str, value: Any, path: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        create(**{field: value})
    assert raised.value.field == path


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sku", "A" * 64),
        ("sku", "A-Z_0-9"),
        ("name", "n" * 200),
        ("category", "c" * 100),
        ("description", "d" * 5000),
        ("price_cents", 0),
        ("price_cents", 100_000_000),
        ("initial_stock", 0),
        ("initial_stock", 1_000_000),
    ],
)
def test_create_accepts_the_limits(field: str, value: Any) -> None:
    assert create(**{field: value}).version == 1


def test_every_invalid_input_is_reported_at_once() -> None:
    with pytest.raises(Rejected) as raised:
        create(sku="bad sku", name="", price_cents=-5)
    assert problems(raised.value) == {
        ("VALIDATION_FAILED", "sku"),
        ("VALIDATION_FAILED", "name"),
        ("VALIDATION_FAILED", "priceCents"),
    }


def test_update_needs_at_least_one_field() -> None:
    product = create()
    with pytest.raises(ValidationFailed) as raised:
        product.update_details(
            name=None, description=None, category=None, expected_version=None, now=LATER
        )
    assert raised.value.field is None


def test_update_raises_only_the_changed_fields() -> None:
    product = create()
    product.events.clear()
    product.update_details(
        name="Big Mug", description=None, category="kitchen", expected_version=1, now=LATER
    )
    [event] = product.events
    assert event.type == "ProductDetailsUpdated"
    assert event.data == {"name": "Big Mug"}
    assert (product.version, product.updated_at) == (2, LATER)


def test_update_with_the_current_values_is_a_no_op() -> None:
    product = create()
    product.events.clear()
    product.update_details(
        name="Mug", description="", category=None, expected_version=None, now=LATER
    )
    assert product.events == []
    assert product.version == 1


def test_update_applies_the_create_limits() -> None:
    product = create()
    with pytest.raises(Rejected) as raised:
        product.update_details(
            name="", description="d" * 5001, category=None, expected_version=None, now=LATER
        )
    assert problems(raised.value) == {
        ("VALIDATION_FAILED", "name"),
        ("VALIDATION_FAILED", "description"),
    }


def test_stale_expected_version_is_a_conflict_and_changes_nothing() -> None:
    product = create()
    product.events.clear()
    with pytest.raises(VersionConflict) as raised:
        product.change_price(999, expected_version=7, now=LATER)
    assert raised.value.field == "expectedVersion"
    assert (product.price_cents, product.version, product.events) == (1299, 1, [])


def test_price_change_records_the_previous_price() -> None:
    product = create()
    product.events.clear()
    product.change_price(1500, expected_version=1, now=LATER)
    [event] = product.events
    assert event.data == {"priceCents": 1500, "previousPriceCents": 1299}


def test_same_price_is_a_no_op() -> None:
    product = create()
    product.events.clear()
    product.change_price(1299, expected_version=None, now=LATER)
    assert product.events == []


@pytest.mark.parametrize("price", [-1, 100_000_001])
def test_price_out_of_range_is_rejected(price: int) -> None:
    with pytest.raises(ValidationFailed):
        create().change_price(price, expected_version=None, now=LATER)


def test_restock_adds_to_stock_on_hand() -> None:
    product = create()
    product.restock(10, now=LATER)
    assert product.stock_on_hand == 15
    assert product.events[-1].data == {"quantity": 10, "stockOnHand": 15}


@pytest.mark.parametrize("quantity", [0, -3, 1_000_001])
def test_restock_quantity_out_of_range_is_rejected(quantity: int) -> None:
    with pytest.raises(ValidationFailed) as raised:
        create().restock(quantity, now=LATER)
    assert raised.value.field == "quantity"


def test_discontinued_product_cannot_be_restocked() -> None:
    product = create()
    product.discontinue(expected_version=None, now=LATER)
    with pytest.raises(InvalidState):
        product.restock(1, now=LATER)


def test_discontinuing_twice_is_an_invalid_state() -> None:
    product = create()
    product.discontinue(expected_version=1, now=LATER)
    assert product.status is ProductStatus.DISCONTINUED
    with pytest.raises(InvalidState):
        product.discontinue(expected_version=None, now=LATER)


@pytest.mark.parametrize("sku", ["straße", "ﬀ-1", "\u017fku", "MUG-Ⅻ", "\uff4d\uff55\uff47"])
def test_only_ascii_letters_are_upper_cased_so_other_letters_stay_refused(sku: str) -> None:
    """`ß`.upper() is `SS` and `ﬀ`.upper() is `FF`: upper-casing first would let them in."""
    with pytest.raises(ValidationFailed) as raised:
        create(sku=normalise_sku(sku))
    assert raised.value.field == "sku"


def test_ascii_skus_are_trimmed_and_upper_cased() -> None:
    assert normalise_sku("  mug-1_a ") == "MUG-1_A"


def test_restock_reports_the_quantity_and_the_state_together() -> None:
    product = create()
    product.discontinue(expected_version=None, now=LATER)
    with pytest.raises(Rejected) as raised:
        product.restock(0, now=LATER)
    assert problems(raised.value) == {("VALIDATION_FAILED", "quantity"), ("INVALID_STATE", None)}


def test_discontinuing_again_with_a_stale_version_reports_both() -> None:
    product = create()
    product.discontinue(expected_version=None, now=LATER)
    with pytest.raises(Rejected) as raised:
        product.discontinue(expected_version=1, now=LATER)
    assert problems(raised.value) == {("VERSION_CONFLICT", "expectedVersion"),
                                      ("INVALID_STATE", None)}  # fmt: skip


def test_restock_may_not_take_stock_on_hand_past_32_bits() -> None:
    product = create(initial_stock=0)
    product.stock_on_hand = 2_147_483_647 - 10
    product.restock(10, now=LATER)
    with pytest.raises(ValidationFailed) as raised:
        product.restock(1, now=LATER)
    assert raised.value.field == "quantity"
    assert product.stock_on_hand == 2_147_483_647
