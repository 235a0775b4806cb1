"""The customers read model: profile, address, and figures over orders not cancelled."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pymongo import IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from domain import events as ev
from domain.events import RecordedEvent
from projections import readdb
from projections.projection import Projector, Write, dispatch, guarded, insert_once

COLLECTION = "customers"


class CustomersProjection:
    name = "customers"
    indexes: dict[str, Sequence[IndexModel]] = {COLLECTION: []}

    def project(self, event: RecordedEvent) -> list[Write]:
        return dispatch(_HANDLERS, event)


def _registered(e: RecordedEvent) -> list[Write]:
    document = {
        "email": e.data["email"],
        "name": e.data["name"],
        "address": e.data["address"],
        "orderCount": 0,
        "lifetimeValueCents": 0,
        "registeredAt": e.occurred_at,
        "version": e.position,
    }
    return [insert_once(COLLECTION, e.aggregate_id, document)]


def _renamed(e: RecordedEvent) -> list[Write]:
    return [guarded(COLLECTION, e.aggregate_id, e, {"$set": {"name": e.data["name"]}})]


def _address_updated(e: RecordedEvent) -> list[Write]:
    return [guarded(COLLECTION, e.aggregate_id, e, {"$set": {"address": e.data["address"]}})]


def _orders(sign: int) -> Callable[[RecordedEvent], list[Write]]:
    def handle(e: RecordedEvent) -> list[Write]:
        inc = {"orderCount": sign, "lifetimeValueCents": sign * e.data["totalCents"]}
        return [guarded(COLLECTION, e.data["customerId"], e, {"$inc": inc})]

    return handle


_HANDLERS: dict[str, Projector] = {
    ev.CUSTOMER_REGISTERED: _registered,
    ev.CUSTOMER_RENAMED: _renamed,
    ev.CUSTOMER_ADDRESS_UPDATED: _address_updated,
    ev.ORDER_PLACED: _orders(+1),
    ev.ORDER_CANCELLED: _orders(-1),
}


async def find_customer(
    db: AsyncDatabase[dict[str, Any]], customer_id: str
) -> dict[str, Any] | None:
    return await readdb.find_by_id(db, COLLECTION, customer_id)
