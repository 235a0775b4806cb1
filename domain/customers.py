"""The Customer aggregate: who orders, and where to."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain import events, validation
from domain.aggregate import Aggregate
from domain.commands import AddressData
from domain.errors import Problems, ValidationFailed

EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
# Checked before upper-casing: "ß".upper() is "SS" and "ﬀ".upper() is "FF".
COUNTRY = re.compile(r"[A-Za-z]{2}")


@dataclass(frozen=True, slots=True)
class Address:
    line1: str
    line2: str | None
    city: str
    postal_code: str
    country: str

    @classmethod
    def parse(cls, data: AddressData, problems: Problems, path: str = "address") -> Address:
        """Checks and normalises an address: trimmed, country upper-cased, empty line2 dropped."""
        for field, value in (
            ("line1", data.line1),
            ("city", data.city),
            ("postalCode", data.postal_code),
        ):
            problems.add(validation.text_length(value, f"{path}.{field}", 1, 200))
        if data.line2 is not None:
            problems.add(validation.max_length(data.line2, f"{path}.line2", 200))
        country = data.country.strip()
        if COUNTRY.fullmatch(country) is None:
            problems.add(
                ValidationFailed(
                    f"{path}.country must be two letters (ISO 3166-1 alpha-2)", f"{path}.country"
                )
            )
        else:
            country = country.upper()
        line2 = (data.line2 or "").strip() or None
        return cls(data.line1.strip(), line2, data.city.strip(), data.postal_code.strip(), country)

    def to_payload(self) -> events.PostalAddress:
        return events.PostalAddress(
            line1=self.line1,
            line2=self.line2,
            city=self.city,
            postal_code=self.postal_code,
            country=self.country,
        )

    @classmethod
    def from_payload(cls, address: events.PostalAddress) -> Address:
        return cls(address.line1, address.line2, address.city, address.postal_code,
                   address.country)  # fmt: skip

    def to_data(self) -> dict[str, Any]:
        """As the write model's rows keep it: the same form as in events."""
        data: dict[str, Any] = events.to_data(self.to_payload())
        return data

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Address:
        return cls.from_payload(events.from_data(events.PostalAddress, data))


def email_key(email: str) -> str:
    return email.strip().casefold()


def check_name(problems: Problems, name: str) -> None:
    problems.add(validation.text_length(name, "name", 1, 200))


@dataclass(kw_only=True)
class Customer(Aggregate):
    aggregate_type = "Customer"

    email: str
    name: str
    address: Address
    registered_at: datetime

    @classmethod
    def register(
        cls,
        *,
        id: str,
        email: str,
        name: str,
        address: AddressData,
        now: datetime,
        problems: Problems | None = None,
    ) -> Customer:
        """Checks every input together, reported with ``problems`` the handler found
        already (an email taken)."""
        problems = Problems() if problems is None else problems
        email = email.strip()
        # email_key (case-folded: "ß" becomes "ss") must fit the same 254 characters.
        if len(email_key(email)) > 254 or EMAIL.fullmatch(email) is None:
            problems.add(ValidationFailed("email is not a valid address", "email"))
        check_name(problems, name)
        parsed = Address.parse(address, problems)
        problems.raise_if_any()
        customer = cls(id=id, email=email, name=name.strip(), address=parsed, registered_at=now)
        customer.raise_event(
            events.CustomerRegistered(
                email=customer.email, name=customer.name, address=parsed.to_payload()
            )
        )
        return customer

    def rename(
        self, name: str, *, expected_version: int | None, orders_placed: int | None = None
    ) -> None:
        """Renaming to the current name is a no-op. ``orders_placed``: how many orders the
        customer has placed, so read models know which of theirs to rename."""
        problems = Problems()
        problems.add(self.version_conflict(expected_version))
        check_name(problems, name)
        problems.raise_if_any()
        if name.strip() == self.name:
            return
        previous, self.name = self.name, name.strip()
        self.raise_event(
            events.CustomerRenamed(
                name=self.name, previous_name=previous, orders_placed=orders_placed
            )
        )

    def update_address(self, address: AddressData, *, expected_version: int | None) -> None:
        """Giving the current address again is a no-op."""
        problems = Problems()
        problems.add(self.version_conflict(expected_version))
        parsed = Address.parse(address, problems)
        problems.raise_if_any()
        if parsed == self.address:
            return
        self.address = parsed
        self.raise_event(events.CustomerAddressUpdated(address=parsed.to_payload()))
