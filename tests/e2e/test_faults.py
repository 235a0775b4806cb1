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
from pathlib import Path
from typing import Any

import httpx

from app.ferretdb import EmbeddedFerretDB
from tests.conftest import Postgres, create_database, eventually
from tests.e2e.conftest import Client, Cluster, Server, wait_until
from tests.e2e.consistency import assert_read_models_match
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


async def burst(
    client: Client, customers: list[str], products: list[str], rng: random.Random,
    halfway: Callable[[], Awaitable[None]],
) -> None:  # fmt: skip
    """Orders from concurrent clients; ``halfway`` runs once a random share is placed.
    Requests cut off by a fault count for nothing: the write model is the truth."""
    cut = rng.randrange(2, BURST - 2)
    placed = 0
    fired = asyncio.Event()

    async def one(n: int) -> None:
        nonlocal placed
        try:
            await place(
                client, customers[n % len(customers)], rng.choice(products), rng.randint(1, 3)
            )
        except (httpx.TransportError, AssertionError):
            return
        placed += 1
        if placed == cut and not fired.is_set():
            fired.set()
            await halfway()

    await asyncio.gather(*(one(n) for n in range(BURST)))
    if not fired.is_set():
        await halfway()


async def shop(client: Client, rng: random.Random) -> tuple[list[str], list[str]]:
    products = [(await product(client, f"SKU-{rng.randrange(10**9)}", 500))["id"] for _ in range(4)]
    customers = [
        (await customer(client, f"c{n}-{rng.randrange(10**9)}@example.org", f"C{n}"))["id"]
        for n in range(3)
    ]
    return customers, products


async def test_killed_and_paused_relays_leave_nothing_lost_or_doubled(cluster: Cluster) -> None:
    seed = random.randrange(10**6)
    rng = random.Random(seed)
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

            await burst(client, customers, products, rng, fault)
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
            await assert_read_models_match(client, cluster.database_url)
        assert leader(cluster.relays) is not None, f"seed {seed}"


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

            await burst(Client(to_victim), customers, products, rng, kill)
            await assert_read_models_match(Client(to_survivor), cluster.database_url)
            victim.start()
            to_victim.base_url = httpx.URL(victim.url)


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

                await burst(Client(http), customers, products, rng, kill)
            server.start()
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
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
            started = time.monotonic()
            answer = (await client.data(RESTOCKED, {"id": made["id"]}))["restockProduct"]
            took = time.monotonic() - started
            assert answer["success"] is False
            assert [e["code"] for e in answer["errors"]] == ["UNAVAILABLE"], answer
            assert took < 2.0, f"a command took {took:.1f}s to fail"
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
