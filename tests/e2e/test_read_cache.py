"""The read cache never answers stale: writes, minVersion reads and rebuilds interleaved.

Each write's answer tells the version it reached; every read with ``minVersion`` m
must show each document at least as it was after the last write at or before m,
whichever process answers (on the production topology the reads go to the api
process that did not take the writes, so its cache is kept exact by the progress
feed alone). Rebuilds swap every collection underneath meanwhile.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from tests.conftest import eventually
from tests.e2e import forkserver
from tests.e2e.conftest import Client, Server
from tests.integration.shop import serving

WRITES = 60
READERS = 4
ADDRESS = {"line1": "1 Way", "city": "Town", "postalCode": "1000", "country": "DE"}


class Written:
    """What each write reached: (version, value) in the order they were made."""

    def __init__(self) -> None:
        self.stock: list[tuple[int, int]] = []
        self.names: list[tuple[int, str]] = []
        self.done = False

    @staticmethod
    def as_of(history: list[tuple[int, Any]], version: int) -> tuple[int, Any] | None:
        """The last write at or before ``version``."""
        before = [entry for entry in history if entry[0] <= version]
        return before[-1] if before else None


async def _rebuild(env: dict[str, str]) -> None:
    result = await asyncio.to_thread(forkserver.run, ["rebuild", "--grace", "3"], env)
    assert result.returncode == 0, result.stderr


@pytest.mark.timeout(600)
async def test_no_stale_answer_under_writes_reads_and_rebuilds(
    server: Server, request: pytest.FixtureRequest, topology: str
) -> None:
    reader_server = server
    if topology == "production":
        reader_server = request.getfixturevalue("module_cluster").apis[1]
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=60) as write_http,
        httpx.AsyncClient(base_url=reader_server.url, timeout=60) as read_http,
    ):
        writer, reader = Client(write_http), Client(read_http)
        product = (
            await writer.data(
                'mutation { createProduct(input: {sku: "CACHE-1", name: "Cached", '
                'category: "c", priceCents: 100, initialStock: 0}) { id version } }'
            )
        )["createProduct"]
        customer = (
            await writer.data(
                "mutation($a: AddressInput!) { registerCustomer(input: "
                '{email: "c@example.com", name: "n0", address: $a}) { id version } }',
                {"a": ADDRESS},
            )
        )["registerCustomer"]
        written = Written()
        written.stock.append((product["version"], 0))
        written.names.append((customer["version"], "n0"))
        restocked = await writer.data(
            "mutation($p: ID!) { restockProduct(id: $p, quantity: 1000000) { version } }",
            {"p": product["id"]},
        )
        written.stock.append((restocked["restockProduct"]["version"], 1_000_000))
        # An order of the customer, so a rename also changes it (a change of many documents).
        order = (
            await writer.data(
                "mutation($c: ID!, $p: ID!) { placeOrder(input: {customerId: $c, "
                "lines: [{productId: $p, quantity: 1}]}) { id version } }",
                {"c": customer["id"], "p": product["id"]},
            )
        )["placeOrder"]
        stale: list[str] = []
        reads = 0
        reads_at_switches: list[int] = []  # reads done when each rebuild had switched
        rebuilt = asyncio.Event()

        async def write() -> None:
            """WRITES pairs of writes at least, and on until both rebuilds have switched."""
            stock = 1_000_000
            i = 0
            while i < WRITES or not rebuilt.is_set():
                i += 1
                quantity = random.randint(1, 9)
                restocked = await writer.data(
                    "mutation($p: ID!, $q: Int!) { restockProduct(id: $p, quantity: $q) "
                    "{ version } }",
                    {"p": product["id"], "q": quantity},
                )
                stock += quantity
                written.stock.append((restocked["restockProduct"]["version"], stock))
                renamed = await writer.data(
                    "mutation($c: ID!, $n: String!) { renameCustomer(id: $c, name: $n) "
                    "{ version } }",
                    {"c": customer["id"], "n": f"n{i}"},
                )
                written.names.append((renamed["renameCustomer"]["version"], f"n{i}"))
            written.done = True

        async def read() -> None:
            nonlocal reads
            while not written.done:
                # A version someone may have just been told, or an older one.
                m = random.choice([written.stock[-1][0], written.names[-1][0]])
                m = max(order["version"], random.choice([m, m - random.randint(0, 5)]))
                data = await reader.data(
                    """query($p: ID!, $c: ID!, $o: ID!, $m: Version) {
                      product(id: $p, minVersion: $m) { stockOnHand version }
                      productBySku(sku: "CACHE-1", minVersion: $m) { stockOnHand version }
                      dashboard(minVersion: $m) { version }
                      customer(id: $c, minVersion: $m) { name version }
                      order(id: $o, minVersion: $m) { customer { name } version }
                      orderHistory(customerId: $c, minVersion: $m) {
                        edges { node { customer { name } } } }
                    }""",
                    {"p": product["id"], "c": customer["id"], "o": order["id"], "m": m},
                )
                reads += 1
                fields = ("product", "productBySku", "customer", "order")
                missing = [f for f in fields if data[f] is None] + (
                    [] if data["orderHistory"]["edges"] else ["orderHistory"]
                )
                if missing:
                    stale.append(f"missing at minVersion {m}: {missing}")
                    continue
                stock = Written.as_of(written.stock, m)
                name = Written.as_of(written.names, m)
                for field in ("product", "productBySku"):
                    got = data[field]
                    # Only restocks change the stock on hand here (an order reserves).
                    if stock is not None and (
                        got["version"] < stock[0] or got["stockOnHand"] < stock[1]
                    ):
                        stale.append(f"{field} at minVersion {m}: {got}, wanted {stock}")
                if data["dashboard"]["version"] < m:  # every event moves the dashboard
                    stale.append(f"dashboard at minVersion {m}: {data['dashboard']}")
                for field, shown in (
                    ("customer", data["customer"]["name"]),
                    ("order", data["order"]["customer"]["name"]),
                    ("orderHistory", data["orderHistory"]["edges"][0]["node"]["customer"]["name"]),
                ):
                    if name is not None and int(shown[1:]) < int(name[1][1:]):
                        stale.append(f"{field} at minVersion {m}: {shown}, wanted {name}")

        async def rebuild() -> None:
            for _ in range(2):
                await _rebuild(server.env)  # it has switched once it exits
                reads_at_switches.append(reads)
            rebuilt.set()

        await asyncio.gather(write(), rebuild(), *(read() for _ in range(READERS)))
        assert not stale, stale[:10]
        # Reads ran before and after each switch: the switches happened under them.
        assert len(reads_at_switches) == 2
        assert 0 < reads_at_switches[0] < reads_at_switches[1] < reads, (reads_at_switches, reads)


async def test_a_document_a_rebuild_changes_is_never_read_from_before_the_switch(
    start_server: Any,
) -> None:
    """A rebuild after a projector fix changes documents. Entries read from the replaced
    collection until the switch must not be served after it: the cache forgets what it
    read from a switched collection. Here the live document is made wrong by hand, and
    read all along the rebuild."""
    server: Server = start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        client = Client(http)
        created = (
            await client.data(
                'mutation { createProduct(input: {sku: "FIXED-1", name: "Right", '
                'category: "c", priceCents: 100}) { id version } }'
            )
        )["createProduct"]
        query = "query($id: ID!, $v: Version) { product(id: $id, minVersion: $v) { name } }"
        variables = {"id": created["id"], "v": created["version"]}
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(server.env["MONGODB_URL"])
        try:  # made wrong in the store, before any read could cache it
            db = mongo[server.env["MONGODB_DATABASE"]]
            served = await serving(db)
            product = {"_id": created["id"]}
            await eventually(lambda: served["products"].find_one(product))
            await served["products"].update_one(product, {"$set": {"name": "Wrong"}})
        finally:
            await mongo.close()
        rebuilt = asyncio.Event()
        names: set[str] = set()

        async def read() -> None:
            while not rebuilt.is_set():
                names.add((await client.data(query, variables))["product"]["name"])

        async def rebuild() -> None:
            await _rebuild(server.env)
            rebuilt.set()

        await asyncio.gather(read(), rebuild())
        assert "Wrong" in names  # the wrong document was read, and cached, before the switch
        assert (await client.data(query, variables))["product"] == {"name": "Right"}
