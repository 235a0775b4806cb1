"""Every string of a command must be text both stores accept: no NUL, no lone surrogate."""

from __future__ import annotations

import pytest

from domain.commands import (
    AddressData,
    CreateProduct,
    OrderLineRequest,
    PlaceOrder,
    RegisterCustomer,
    ShipOrder,
    UpdateCustomerAddress,
    UpdateProduct,
)
from domain.validation import invalid_text

HOME = AddressData("Main St 1", "Berlin", "10115", "DE")


def fields(command: object) -> list[str | None]:
    return [problem.field for problem in invalid_text(command)]


def test_valid_text_of_any_script_passes() -> None:
    assert fields(CreateProduct("MUG", "Tasse für Kaffee ☕ 茶", "küche", 100, "😀")) == []


@pytest.mark.parametrize("bad", ["a\x00b", "\ud800", "x\udfffy"])
def test_nul_and_lone_surrogates_are_refused_by_their_field(bad: str) -> None:
    assert fields(CreateProduct("MUG", bad, "kitchen", 100)) == ["name"]


def test_nested_fields_are_named_by_their_input_path_in_camel_case() -> None:
    address = AddressData("Main St 1", "Berlin", "10\x00115", "DE", line2="\ud83d")
    assert fields(RegisterCustomer("a@b.de", "Ada", address)) == [
        "address.postalCode", "address.line2",
    ]  # fmt: skip
    lines = (OrderLineRequest("p1", 1), OrderLineRequest("p\udc002", 1))
    order = PlaceOrder("c\x00", lines, shipping_address=AddressData("\x00", "B", "1", "DE"))
    assert fields(order) == ["customerId", "lines.1.productId", "shippingAddress.line1"]


def test_an_aggregate_id_given_as_an_argument_is_named_id() -> None:
    assert fields(UpdateProduct("p\x00", name="x")) == ["id"]
    assert fields(UpdateCustomerAddress("c\x00", HOME)) == ["id"]
    assert fields(ShipOrder("o1", "T\x00")) == ["trackingNumber"]


def test_an_id_longer_than_any_id_is_refused_before_it_is_looked_up() -> None:
    long = "p" * 250_000
    assert fields(UpdateProduct(long, name="x")) == ["id"]
    lines = (OrderLineRequest("p1", 1), OrderLineRequest(long, 1))
    assert fields(PlaceOrder(long, lines)) == ["customerId", "lines.1.productId"]
    [problem] = invalid_text(ShipOrder(long, "T1"))
    assert "at most 64 characters" in str(problem)
    assert fields(UpdateProduct("p" * 64, name="x")) == []
