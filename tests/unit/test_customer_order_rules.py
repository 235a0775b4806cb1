"""Customer and order rules of RULES.md, on the aggregates alone."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from domain.commands import AddressData, OrderLineRequest
from domain.customers import Customer
from domain.errors import InvalidState, Problems, Rejected, ValidationFailed, VersionConflict
from domain.orders import Order, OrderLine, OrderStatus, check_lines

NOW = datetime(2026, 1, 1, tzinfo=UTC)
HOME = AddressData(line1="Main St 1", city="Berlin", postal_code="10115", country="de")


def register(**overrides: Any) -> Customer:
    fields: dict[str, Any] = {
        "id": "c1", "email": "Ada@Example.org", "name": "Ada", "address": HOME, "now": NOW,
    }  # fmt: skip
    return Customer.register(**{**fields, **overrides})


def fields_of(error: ValidationFailed | Rejected) -> set[str | None]:
    return {p.field for p in error.problems}


def test_registration_normalises_the_address() -> None:
    customer = register(address=AddressData("  Main St 1 ", " Berlin", "10115 ", "de", line2=" "))
    [event] = customer.events
    assert event.type == "CustomerRegistered"
    assert event.data["address"] == {
        "line1": "Main St 1", "line2": None, "city": "Berlin", "postalCode": "10115",
        "country": "DE",
    }  # fmt: skip


@pytest.mark.parametrize("email", ["", "ada", "ada@", "@example.org", "ada@example", "a b@c.de"])
def test_invalid_emails_are_rejected(email: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        register(email=email)
    assert raised.value.field == "email"


def test_every_address_problem_is_reported_with_its_path() -> None:
    with pytest.raises(Rejected) as raised:
        register(name="", address=AddressData(line1="", city=" ", postal_code="", country="DEU"))
    assert fields_of(raised.value) == {
        "name", "address.line1", "address.city", "address.postalCode", "address.country",
    }  # fmt: skip


def test_rename_raises_the_new_name_and_same_name_is_a_no_op() -> None:
    customer = register()
    customer.events.clear()
    customer.rename("Ada", expected_version=None)
    assert customer.events == []
    customer.rename("Ada Lovelace", expected_version=1)
    assert customer.events[0].data == {"name": "Ada Lovelace", "previousName": "Ada"}
    with pytest.raises(VersionConflict):
        customer.rename("Countess", expected_version=1)


def test_address_update_validates_and_skips_the_same_address() -> None:
    customer = register()
    customer.events.clear()
    customer.update_address(HOME, expected_version=None)
    assert customer.events == []
    with pytest.raises(ValidationFailed) as raised:
        customer.update_address(AddressData("x", "y", "z", country="1X"), expected_version=None)
    assert raised.value.field == "address.country"


def requests(*pairs: tuple[str, int]) -> list[OrderLineRequest]:
    return [OrderLineRequest(product_id, quantity) for product_id, quantity in pairs]


@pytest.mark.parametrize(
    ("lines", "fields"),
    [
        ([], {"lines"}),
        (requests(*((f"p{i}", 1) for i in range(101))), {"lines"}),
        (requests(("p1", 0)), {"lines.0.quantity"}),
        (requests(("p1", 1), ("p2", 1001)), {"lines.1.quantity"}),
        (requests(("p1", 1), ("p2", 1), ("p1", 2)), {"lines.2.productId"}),
    ],
)
def test_order_lines_are_checked(lines: list[OrderLineRequest], fields: set[str]) -> None:
    problems = Problems()
    check_lines(problems, lines)
    assert {p.field for p in problems} == fields


def placed_order() -> Order:
    lines = [OrderLine("p1", "MUG", "Mug", 2, 1299), OrderLine("p2", "TEE", "Tee", 1, 1999)]
    customer = register()
    return Order.place(
        id="o1", customer=customer, lines=lines, shipping_address=customer.address, now=NOW
    )


def test_a_placed_order_carries_prices_totals_and_the_customer() -> None:
    order = placed_order()
    [event] = order.events
    assert event.data["totalCents"] == 2 * 1299 + 1999
    assert event.data["itemCount"] == 3
    assert (event.data["customerName"], event.data["customerEmail"]) == ("Ada", "Ada@Example.org")
    assert event.data["lines"][0] == {
        "productId": "p1", "sku": "MUG", "productName": "Mug", "quantity": 2,
        "unitPriceCents": 1299, "lineTotalCents": 2598,
    }  # fmt: skip


def test_cancel_records_what_it_releases() -> None:
    order = placed_order()
    order.events.clear()
    order.cancel("changed my mind", expected_version=1, now=NOW)
    assert order.status is OrderStatus.CANCELLED
    assert order.events[0].data["lines"] == [
        {"productId": "p1", "quantity": 2, "lineTotalCents": 2598},
        {"productId": "p2", "quantity": 1, "lineTotalCents": 1999},
    ]


@pytest.mark.parametrize("reason", ["", " ", "r" * 501])
def test_cancel_needs_a_reason_of_1_to_500(reason: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        placed_order().cancel(reason, expected_version=None, now=NOW)
    assert raised.value.field == "reason"


@pytest.mark.parametrize("tracking", ["", "t" * 101])
def test_ship_needs_a_tracking_number_of_1_to_100(tracking: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        placed_order().ship(tracking, expected_version=None, now=NOW)
    assert raised.value.field == "trackingNumber"


def test_only_placed_orders_can_be_shipped_or_cancelled() -> None:
    shipped = placed_order()
    shipped.ship("TRACK-1", expected_version=None, now=NOW)
    with pytest.raises(InvalidState):
        shipped.cancel("too late", expected_version=None, now=NOW)
    cancelled = placed_order()
    cancelled.cancel("oops", expected_version=None, now=NOW)
    with pytest.raises(InvalidState):
        cancelled.ship("TRACK-2", expected_version=None, now=NOW)
    with pytest.raises(InvalidState):
        cancelled.cancel("again", expected_version=None, now=NOW)


@pytest.mark.parametrize("country", ["ß", "ﬀ", "ǆ", "\uff24e"])
def test_a_country_is_two_ascii_letters_before_upper_casing(country: str) -> None:
    """`ß` upper-cases to `SS` and `ﬀ` to `FF`: two letters, but not an ISO code."""
    with pytest.raises(ValidationFailed) as raised:
        register(address=AddressData("Main St 1", "Berlin", "10115", country=country))
    assert raised.value.field == "address.country"


def test_cancelling_a_shipped_order_without_a_reason_reports_both() -> None:
    shipped = placed_order()
    shipped.ship("TRACK-1", expected_version=None, now=NOW)
    with pytest.raises(Rejected) as raised:
        shipped.cancel(" ", expected_version=5, now=NOW)
    assert {(p.code, p.field) for p in raised.value.problems} == {
        ("VERSION_CONFLICT", "expectedVersion"), ("VALIDATION_FAILED", "reason"),
        ("INVALID_STATE", None),
    }  # fmt: skip


def test_an_email_whose_case_folded_key_is_too_long_is_rejected() -> None:
    """ "ß" folds to "ss": 251 characters make a 491-character key, which PostgreSQL's
    254-character column would refuse with a raw error."""
    with pytest.raises(ValidationFailed) as raised:
        register(email="ß" * 240 + "@example.de")
    assert raised.value.field == "email"
