"""Faults on the production topology and the embedded one: relays and servers killed
(kill -9) or paused (SIGSTOP) at random points of an order burst. Afterwards the read
models equal what the write model implies, whatever was cut off."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from app.ferretdb import EmbeddedFerretDB
from domain.model import order_lines, orders, outbox
from tests.conftest import Postgres, create_database, eventually
from tests.e2e.conftest import Client, Cluster, Server, bearer, wait_until
from tests.e2e.consistency import assert_read_models_match, read_models, write_model
from tests.e2e.test_shop_api import customer, place, product

ROUNDS = int(os.environ.get("CHAOS_ROUNDS", "3"))
BURST = 24
RESTOCK = """mutation($id: ID!) { restockProduct(id: $id, quantity: 1) { success version } }"""


def running(server: Server) -> bool:
    try:
        text = httpx.get(f"{server.url}/metrics", timeout=2).text
    except httpx.TransportError:
        return False
    return "shop_relay_running 1.0" in text


def leader(relays: list[Server]) -> Server:
    """The one relay holding the lease (waits until there is one)."""
    found: list[Server] = []

    def one() -> bool:
        found[:] = [r for r in relays if r.process is not None and running(r)]
        return len(found) == 1

    wait_until(one, 15, lambda: f"relays running: {len(found)}")
    return found[0]


PLACE = """mutation($customer: ID!, $product: ID!, $quantity: Int!) {
  placeOrder(input: {customerId: $customer, lines: [{productId: $product, quantity: $quantity}]}) {
    success id version errors { code field message } } }"""
PRICE_CENTS = 1000  # every product of ``shop`` (tests.e2e.test_shop_api.product)


@dataclass(frozen=True)
class Acknowledged:
    """An order the server said it placed: what it must keep, whatever was cut off."""

    id: str
    version: int  # the position the answer gave: its OrderPlaced event's
    customer: str
    product: str
    quantity: int


async def burst(
    client: Client, customers: list[str], products: list[str], rng: random.Random,
    halfway: Callable[[], Awaitable[None]], *, cut_off: bool,
) -> list[Acknowledged]:  # fmt: skip
    """Orders from concurrent clients; ``halfway`` runs once a random share of them has
    been acknowledged. Returns every acknowledged order.

    With ``cut_off`` (the fault takes down the process the client talks to) a request may
    fail on the way: a transport error, or 502/503 from a process going down. Any other
    answer must be a placed order: a GraphQL error (INTERNAL_SERVER_ERROR, say) or a
    refusal fails the test, and so does a burst in which fewer orders than that share
    were acknowledged. Without ``cut_off`` every order must be placed."""
    cut = rng.randrange(2, BURST - 2)
    acknowledged: list[Acknowledged] = []
    lost: list[str] = []
    fired = asyncio.Event()

    async def one(n: int) -> None:
        who, what = customers[n % len(customers)], rng.choice(products)
        quantity = rng.randint(1, 3)
        variables = {"customer": who, "product": what, "quantity": quantity}
        try:
            response = await client.http.post(
                "/graphql",
                json={"query": PLACE, "variables": variables},
                headers=bearer(client.token),
            )
        except httpx.TransportError as error:
            if not cut_off:
                message = f"order {n} cut off with no fault on its way: {error!r}"
                raise AssertionError(message) from error
            lost.append(repr(error))
            return
        if cut_off and response.status_code in (502, 503):
            lost.append(str(response.status_code))
            return
        assert response.status_code == 200, response.text
        body = response.json()
        assert "errors" not in body, body
        answer = body["data"]["placeOrder"]
        assert answer["success"], answer
        acknowledged.append(Acknowledged(answer["id"], answer["version"], who, what, quantity))
        if len(acknowledged) == cut and not fired.is_set():
            fired.set()
            await halfway()

    await asyncio.gather(*(one(n) for n in range(BURST)))
    assert fired.is_set(), f"{len(acknowledged)} of {BURST} placed, {cut} needed: {lost}"
    if not cut_off:
        assert len(acknowledged) == BURST
    return acknowledged


async def assert_acknowledged_kept(
    client: Client, database_url: str, acknowledged: list[Acknowledged]
) -> None:
    """Each acknowledged order is in SQL as acknowledged (its lines, its total, its event
    at the acknowledged position) and in the read models at that position."""
    assert acknowledged
    ids = [a.id for a in acknowledged]
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(orders).where(orders.c.id.in_(ids)))).mappings()
            stored = {r["id"]: r for r in rows}
            lines = (
                await conn.execute(sa.select(order_lines).where(order_lines.c.order_id.in_(ids)))
            ).mappings()
            stored_lines: dict[str, list[Any]] = {id_: [] for id_ in stored}
            for line in lines:
                stored_lines[line["order_id"]].append(line)
            versions = [a.version for a in acknowledged]
            events = (
                await conn.execute(sa.select(outbox).where(outbox.c.position.in_(versions)))
            ).mappings()
            at = {e["position"]: e for e in events}
    finally:
        await engine.dispose()
    for a in acknowledged:
        assert a.id in stored, f"acknowledged order {a} is not in the write store"
        row = stored[a.id]
        assert (row["customer_id"], row["status"], row["total_cents"]) == (
            a.customer, "PLACED", a.quantity * PRICE_CENTS
        ), (a, dict(row))  # fmt: skip
        assert [(x["product_id"], x["quantity"]) for x in stored_lines[a.id]] == [
            (a.product, a.quantity)
        ], a
        event = at.get(a.version)
        assert event is not None, f"no event at the acknowledged position of {a}"
        assert (event["type"], event["aggregate_id"]) == ("OrderPlaced", a.id), (a, dict(event))
    for a in acknowledged:
        read = (await client.data(ORDER, {"id": a.id, "v": a.version}))["order"]
        assert read is not None, f"acknowledged order {a} is not in the read models"
        assert read == {
            "customer": {"id": a.customer},
            "status": "PLACED",
            "totalCents": a.quantity * PRICE_CENTS,
            "lines": [{"productId": a.product, "quantity": a.quantity}],
            "version": a.version,
        }, a


ORDER = """query($id: ID!, $v: Version) {
  order(id: $id, minVersion: $v) {
    customer { id } status totalCents lines { productId quantity } version } }"""


async def shop(client: Client, rng: random.Random) -> tuple[list[str], list[str]]:
    products = [(await product(client, f"SKU-{rng.randrange(10**9)}", 500))["id"] for _ in range(4)]
    customers = [
        (await customer(client, f"c{n}-{rng.randrange(10**9)}@example.org", f"C{n}"))["id"]
        for n in range(3)
    ]
    return customers, products


def shortfalls(expected: dict[str, Any], found: dict[str, Any]) -> dict[str, int]:
    """How far each counted figure of the read models falls short of the write model's
    (negative: beyond it), by path; only figures that placing orders moves."""
    gaps: dict[str, int] = {}
    for field, value in expected["dashboard"].items():
        gaps[f"dashboard.{field}"] = value - found["dashboard"][field]
    for id_, stock in expected["products"].items():
        for field in ("stockOnHand", "stockReserved"):
            gaps[f"products.{id_}.{field}"] = stock[field] - found["products"][id_][field]
    for id_ in expected["sales"].keys() | found["sales"].keys():
        want, got = expected["sales"].get(id_, {}), found["sales"].get(id_, {})
        for field in ("unitsSold", "revenueCents", "orderCount"):
            gaps[f"sales.{id_}.{field}"] = want.get(field, 0) - got.get(field, 0)
    return {path: gap for path, gap in gaps.items() if gap}


@pytest.mark.timeout(600)  # rounds of restarts on a busy machine
async def test_killed_and_paused_relays_leave_nothing_lost_or_doubled(cluster: Cluster) -> None:
    """Every acknowledged order is kept and projected, none is applied twice, and the
    read models equal the write model; except that a relay paused (SIGSTOP) with a bulk
    write on its way may land that write late, which FerretDB, unlike MongoDB, lets undo
    the newest update of a document (docs/read-models.md, "What no lease without the
    store's help can close"). Only placements happen here, so such a lost update leaves
    a figure short, never beyond: after a paused round figures may fall short, never
    exceed SQL's, and a killed round may lose nothing more."""
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    lost: dict[str, int] = {}  # figures short since a paused round, as documented
    async with httpx.AsyncClient(base_url=cluster.apis[0].url, timeout=30) as http:
        client = Client(http)
        customers, products = await shop(client, rng)
        for round_ in range(ROUNDS):
            old = leader(cluster.relays)
            paused = round_ % 2 == 1

            async def fault(old: Server = old, paused: bool = paused) -> None:
                if paused:
                    assert old.process is not None
                    old.process.send_signal(signal.SIGSTOP)
                else:
                    old.kill()

            acknowledged = await burst(client, customers, products, rng, fault, cut_off=False)
            new = leader([r for r in cluster.relays if r is not old and r.process is not None])
            assert new is not old
            if paused:
                assert old.process is not None
                old.process.send_signal(signal.SIGCONT)
                # It finds its lease gone and stands by, whatever it was doing when paused.
                wait_until(lambda old=old: not running(old), 15)
                assert leader(cluster.relays) is new
            else:
                old.start()
            await assert_acknowledged_kept(client, cluster.database_url, acknowledged)
            expected = await write_model(cluster.database_url)
            found = await read_models(client, expected)
            where = f"round {round_} ({'paused' if paused else 'killed'}), seed {seed}"
            assert found["orders"] == expected["orders"], where
            assert found["products"].keys() == expected["products"].keys(), where
            gaps = shortfalls(expected, found)
            doubled = {path: gap for path, gap in gaps.items() if gap < 0}
            assert not doubled, f"read models beyond the write model, {where}: {doubled}"
            if paused:
                lost = gaps  # a late write may have undone updates: never more than made
            assert gaps == lost, f"updates lost with no relay paused, {where}: {gaps}"
        assert leader(cluster.relays) is not None, f"seed {seed}"


@pytest.mark.timeout(600)  # rounds of restarts on a busy machine
async def test_killed_api_processes_lose_no_accepted_command(cluster: Cluster) -> None:
    rng = random.Random()
    victim, survivor = cluster.apis
    async with (
        httpx.AsyncClient(base_url=victim.url, timeout=30) as to_victim,
        httpx.AsyncClient(base_url=survivor.url, timeout=30) as to_survivor,
    ):
        customers, products = await shop(Client(to_survivor), rng)
        for _ in range(ROUNDS):

            async def kill() -> None:
                victim.kill()

            acknowledged = await burst(
                Client(to_victim), customers, products, rng, kill, cut_off=True
            )
            await assert_acknowledged_kept(Client(to_survivor), cluster.database_url, acknowledged)
            await assert_read_models_match(Client(to_survivor), cluster.database_url)
            victim.start()
            to_victim.base_url = httpx.URL(victim.url)


@pytest.mark.timeout(600)  # rounds of restarts on a busy machine
async def test_a_killed_all_in_one_server_restarts_consistent(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    """The embedded default: one process, its own FerretDB, SQLite; kill -9 mid-burst,
    restart on the same files."""
    env = {k: v for k, v in server_env.items() if k != "MONGODB_URL"}
    server = Server(env, tmp_path / "server.log").start()
    rng = random.Random()
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'var' / 'write.db'}"
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            customers, products = await shop(Client(http), rng)
        for _ in range(ROUNDS):
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:

                async def kill() -> None:
                    server.kill()

                acknowledged = await burst(
                    Client(http), customers, products, rng, kill, cut_off=True
                )
            server.start()
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                await assert_acknowledged_kept(Client(http), database_url, acknowledged)
                await assert_read_models_match(Client(http), database_url)
    finally:
        server.stop()


PRODUCT = "query($id: ID!, $v: Version) { product(id: $id, minVersion: $v) { stockOnHand } }"
RESTOCKED = """mutation($id: ID!) {
  restockProduct(id: $id, quantity: 1) { success version errors { code message } } }"""


async def test_with_the_write_store_down_commands_fail_fast_and_reads_go_on(
    start_server: Any,
) -> None:
    postgres = Postgres()
    postgres.start()
    try:
        database = "shop"
        await create_database(postgres.url, database)
        server: Server = start_server(DATABASE_URL=f"{postgres.url}/{database}")
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            client = Client(http)
            made = await product(client, "DOWN-1", 5)
            # The relay reads the outbox from the write store: let it project the product
            # before that store goes away (a minVersion read waits until it has).
            read = await client.data(PRODUCT, {"id": made["id"], "v": made["version"]})
            assert read == {"product": {"stockOnHand": 5}}
            postgres.stop()
            # Fails fast: a server that waited for the store to come back would never
            # answer (it comes back only below), and the request would time out.
            http.timeout = httpx.Timeout(20)
            answer = (await client.data(RESTOCKED, {"id": made["id"]}))["restockProduct"]
            http.timeout = httpx.Timeout(30)
            assert answer["success"] is False
            assert [e["code"] for e in answer["errors"]] == ["UNAVAILABLE"], answer
            read = await client.data(PRODUCT, {"id": made["id"], "v": made["version"]})
            assert read == {"product": {"stockOnHand": 5}}

            postgres.start()  # writes resume without a restart
            answers: list[dict[str, Any]] = []

            async def restocked() -> bool:
                answers.append((await client.data(RESTOCKED, {"id": made["id"]}))["restockProduct"])
                return bool(answers[-1]["success"])

            await eventually(restocked, within=15, interval=0.2)
            read = await client.data(PRODUCT, {"id": made["id"], "v": answers[-1]["version"]})
            assert read == {"product": {"stockOnHand": 6}}
    finally:
        postgres.remove()


async def test_with_the_read_store_down_commands_are_accepted_and_reads_catch_up(
    cluster: Cluster, ferretdb_pg: EmbeddedFerretDB
) -> None:
    """FerretDB stops answering (SIGSTOP) while orders come in, then comes back."""
    rng = random.Random()
    assert ferretdb_pg.process is not None
    async with httpx.AsyncClient(base_url=cluster.apis[0].url, timeout=30) as http:
        client = Client(http)
        customers, products = await shop(client, rng)
        ferretdb_pg.process.send_signal(signal.SIGSTOP)
        placed: list[dict[str, Any]] = []
        try:
            down_until = time.monotonic() + 3  # orders keep coming for 3 s of outage
            while time.monotonic() < down_until:
                n = len(placed)
                placed.append(await place(client, customers[n % 3], products[n % 4], 1))
        finally:
            ferretdb_pg.process.send_signal(signal.SIGCONT)
        assert all(p["success"] for p in placed), placed
        # Back: the last write is readable within seconds, and everything matches.
        await assert_read_models_match(client, cluster.database_url)
