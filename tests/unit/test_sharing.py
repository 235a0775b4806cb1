"""Subscription events executed once for every subscriber, but never a fault's errors."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from types import SimpleNamespace
from typing import Any

import strawberry

from schema import sharing
from schema.build import ShopSchema
from schema.limits import DocumentCache, DocumentLimits, Limits
from schema.sharing import SharedEventExecutor, shared_payload

DOCUMENT: dict[str, Any] = {"id": "t1"}


@strawberry.type
class Thing:
    id: str

    @strawberry.field
    def broken(self) -> str:
        raise ValueError("boom")


def thing(document: dict[str, Any]) -> Thing:
    return Thing(id=document["id"])


@strawberry.type
class Query:
    x: int = 1


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def thing(self) -> AsyncGenerator[Thing, None]:
        yield shared_payload(DOCUMENT, thing)


# The parse cache (DocumentLimits) makes one operation text one operation node.
DOCUMENTS = DocumentCache(1 << 20)
SCHEMA = ShopSchema(query=Query, subscription=Subscription,
                    execution_context_class=SharedEventExecutor,
                    extensions=[lambda: DocumentLimits(Limits(), DOCUMENTS)])  # fmt: skip


async def first_result(query: str, request: str) -> Any:
    async for result in await SCHEMA.subscribe(
        query, context_value=SimpleNamespace(request_id=request)
    ):
        return result
    raise AssertionError("no result")


async def test_subscribers_with_the_same_selection_share_one_execution() -> None:
    before = (sharing.STATS.executed, sharing.STATS.shared)
    results = [await first_result("subscription { thing { id } }", f"r{n}") for n in range(3)]
    assert [r.data for r in results] == [{"thing": {"id": "t1"}}] * 3
    assert (sharing.STATS.executed - before[0], sharing.STATS.shared - before[1]) == (1, 2)


async def test_a_fault_is_masked_and_logged_for_each_subscriber() -> None:
    query = "subscription { thing { id broken } }"
    a, b = await first_result(query, "req-a"), await first_result(query, "req-b")
    assert a.errors[0].message == "Internal server error (request id req-a)"
    assert b.errors[0].message == "Internal server error (request id req-b)"
