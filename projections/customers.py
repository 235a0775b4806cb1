"""The customers read model: profile, address, and figures over orders not cancelled."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pymongo import IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from domain import events as ev
from domain.events import RecordedEvent
from projections import readdb
from projections.projection import Write, dispatch, guarded, insert_once, on, projectors

NAME = "customers"
"""The projection's name: its checkpoint, and what ``minVersion`` waits on."""
COLLECTION = "customers"


class CustomersProjection:
    name = NAME
    indexes: dict[str, Sequence[IndexModel]] = {COLLECTION: []}

    def project(self, event: RecordedEvent) -> list[Write]:
        return dispatch(_HANDLERS, event)


def _registered(e: RecordedEvent, event: ev.CustomerRegistered) -> list[Write]:
    document = {
        "email": event.email,
        "name": event.name,
        "address": ev.to_data(event.address),
        "orderCount": 0,
        "lifetimeValueCents": 0,
        "registeredAt": e.occurred_at,
        "version": e.position,
    }
    return [insert_once(COLLECTION, e.aggregate_id, document)]


def _renamed(e: RecordedEvent, event: ev.CustomerRenamed) -> list[Write]:
    return [guarded(COLLECTION, e.aggregate_id, e, {"$set": {"name": event.name}})]


def _address_updated(e: RecordedEvent, event: ev.CustomerAddressUpdated) -> list[Write]:
    address = ev.to_data(event.address)
    return [guarded(COLLECTION, e.aggregate_id, e, {"$set": {"address": address}})]


def _orders(
    sign: int,
) -> Callable[[RecordedEvent, ev.OrderPlaced | ev.OrderCancelled], list[Write]]:
    def handle(e: RecordedEvent, event: ev.OrderPlaced | ev.OrderCancelled) -> list[Write]:
        inc = {"orderCount": sign, "lifetimeValueCents": sign * event.total_cents}
        return [guarded(COLLECTION, event.customer_id, e, {"$inc": inc})]

    return handle


_HANDLERS = projectors(
    on(ev.CustomerRegistered, _registered),
    on(ev.CustomerRenamed, _renamed),
    on(ev.CustomerAddressUpdated, _address_updated),
    on(ev.OrderPlaced, _orders(+1)),
    on(ev.OrderCancelled, _orders(-1)),
)


async def find_customer(
    db: AsyncDatabase[dict[str, Any]], customer_id: str
) -> dict[str, Any] | None:
    return await readdb.find_by_id(db, COLLECTION, customer_id)
