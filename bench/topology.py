"""P10: the production topology across processes.

PostgreSQL write store, one FerretDB on PostgreSQL, two ``relay`` and two ``api``
processes (``cqrs-shop serve --role``). It measures what only this topology has:

- a write through one api process read back at its version (``minVersion``) through
  the other: the commit wakes a relay in a third process (NOTIFY), whose progress
  reaches the reader through the progress feed;
- the same write heard by a subscription on the other api process;
- fail-over: the lease holder killed (kill -9), until a write is readable again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from app.bootstrap import connect_read_store
from app.ferretdb import EmbeddedFerretDB, ensure_binary, free_port
from bench import measures
from bench.harness import (
    BENCH_SECRET,
    ROOT,
    GraphQLClient,
    NotYetConsistent,
    Row,
    ServerProcess,
    Stores,
    Subscription,
    caught_up,
    progress,
    summary,
)
from bench.measures import Options
from bench.postgres import Postgres

CREATE = """mutation($sku: String!) { createProduct(input: {sku: $sku, name: "P10",
  category: "bench", priceCents: 100, initialStock: 1}) { id version } }"""
RESTOCK = "mutation($id: ID!) { restockProduct(id: $id, quantity: 1) { version } }"
READ = "query($id: ID!, $v: Version) { product(id: $id, minVersion: $v) { version } }"
FOLLOW = "subscription($id: ID!) { productUpdated(id: $id) { version } }"


class Process:
    def __init__(self, role: str, env: dict[str, str], log: Path) -> None:
        self.role = role
        self.env = env
        self.log = log
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port = free_port()
        command = [sys.executable, "-m", "app", "serve", "--port", str(self.port),
                   "--role", self.role]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, env=self.env, cwd=ROOT, stdout=log,
                                            stderr=log)  # fmt: skip

    async def ready(self, session: aiohttp.ClientSession, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.role} exited:\n{self.log.read_text()[-2000:]}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{self.url}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.role} not ready in {within} s")

    async def leads(self, session: aiohttp.ClientSession) -> bool:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{self.url}/metrics") as response:
                return "shop_relay_running 1.0" in await response.text()
        return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class Topology:
    apis: list[Process]
    relays: list[Process]
    postgres: Postgres
    ferretdb: EmbeddedFerretDB
    env: dict[str, str]
    mongodb_url: str


@contextlib.asynccontextmanager
async def topology(
    folder: Path, cache_dir: Path, relays: int = 2, apis: int = 2
) -> AsyncIterator[Topology]:
    postgres = Postgres()
    postgres.start()
    ferretdb: EmbeddedFerretDB | None = None
    processes: list[Process] = []
    try:
        await postgres.create_database("shop")
        await postgres.create_database("ferretdb")
        ferretdb = EmbeddedFerretDB(
            await asyncio.to_thread(ensure_binary, cache_dir, progress),
            folder / "ferretdb-pg", postgresql_url=postgres.libpq_url("ferretdb"),
        )  # fmt: skip
        mongodb_url = await asyncio.to_thread(ferretdb.start)
        env = {
            **os.environ, "SHOP_DATA_DIR": str(folder), "SHOP_AUTH_SECRET": BENCH_SECRET,
            "DATABASE_URL": f"{postgres.url}/shop", "MONGODB_URL": mongodb_url,
            "LOG_LEVEL": "WARNING",
        }  # fmt: skip
        relay_processes = [Process("relay", env, folder / f"relay{n}.log") for n in range(relays)]
        api_processes = [Process("api", env, folder / f"api{n}.log") for n in range(apis)]
        processes = [*relay_processes, *api_processes]
        for process in processes:
            process.start()
        async with aiohttp.ClientSession() as session:
            for process in processes:
                await process.ready(session)
        yield Topology(api_processes, relay_processes, postgres, ferretdb, env, mongodb_url)
    finally:
        for process in processes:
            process.stop()
        if ferretdb is not None:
            ferretdb.stop()
        postgres.remove()


async def p10_topology(
    folder: Path, cache_dir: Path, writes: int = 300, failovers: int = 3
) -> list[Row]:
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    async with topology(folder, cache_dir) as shop:
        apis, relays = shop.apis, shop.relays
        writer = GraphQLClient(f"{apis[0].url}/graphql", 8)
        reader = GraphQLClient(f"{apis[1].url}/graphql", 8)
        async with writer, reader:
            created = await writer.post(CREATE, {"sku": f"P10-{uuid.uuid4().hex[:8]}"})
            product = created["createProduct"]["id"]
            await read_at(reader, product, created["createProduct"]["version"])
            progress(f"P10: {writes} writes on one api process, read on the other")
            lags, round_trips = [], []
            for _ in range(writes):
                began = time.perf_counter()
                version = await restock(writer, product)
                answered = time.perf_counter()
                await read_at(reader, product, version)
                lags.append(time.perf_counter() - answered)
                round_trips.append(time.perf_counter() - began)
            progress("P10: the same, heard by a subscription on the other")
            heard = []
            ws = f"ws://127.0.0.1:{apis[1].port}/graphql"
            async with Subscription.open(ws, FOLLOW, {"id": product}) as subscription:
                await subscription.next()  # the document now
                for _ in range(min(writes, 200)):
                    began = time.perf_counter()
                    version = await restock(writer, product)
                    while (await subscription.next())["productUpdated"]["version"] < version:
                        pass
                    heard.append(time.perf_counter() - began)
            progress(f"P10: the same under {LOAD_RATE} restocks/s of background load")
            loaded = await under_load(writer, reader, product)
            takeovers = [
                await failover(apis, relays, writer, reader, product) for _ in range(failovers)
            ]
            progress("P10: the read store stopped (SIGSTOP) for 3 s under writes")
            read_store_back = await read_store_outage(shop, writer, reader, product)
            progress("P10: the write store stopped")
            failed_in, writes_back = await write_store_outage(shop, writer, product)
    lag, trip, hear, load = summary(lags), summary(round_trips), summary(heard), summary(loaded)
    takeover = summary(takeovers, scale=1.0)
    return [
        Row("P10a", "write on one api, minVersion read on another: lag p50", lag["p50"], None,
            "ms", "<= 30 ms", detail={"lag": lag, "write_and_read": trip}),
        Row("P10b", "the same, p99", lag["p99"], None, "ms", "<= 100 ms", detail=lag),
        Row("P10c", "the same, write and read together, p50", trip["p50"], None, "ms", "",
            detail=trip),
        Row("P10d", "a subscription on another api hears a write, p50", hear["p50"], None,
            "ms", "", detail=hear),
        Row("P10e", f"lag p99 under {LOAD_RATE} writes/s (relay in its own process)",
            load["p99"], None, "ms", "", detail=load),
        Row("P10f", f"relay fail-over after kill -9 (median of {failovers})", takeover["p50"],
            None, "s", "<= 3 s", detail={"seconds": [round(t, 2) for t in takeovers]}),
        Row("P10g", "read store back after 3 s down: last write readable after", read_store_back,
            None, "s", "", detail={}),
        Row("P10h", "write store down: a command answers UNAVAILABLE after", failed_in * 1000,
            None, "ms", "<= 2000 ms", detail={}),
        Row("P10i", "write store back: first command accepted after", writes_back * 1000, None,
            "ms", "", detail={}),
    ]  # fmt: skip


LOAD_RATE = 50
PG_HISTORY_ORDERS = 20_000


async def restock(writer: GraphQLClient, product: str) -> int:
    version: int = (await writer.post(RESTOCK, {"id": product}))["restockProduct"]["version"]
    return version


async def under_load(
    writer: GraphQLClient, reader: GraphQLClient, product: str, seconds: float = 5.0
) -> list[float]:
    """Writes at LOAD_RATE per second (open loop); each one's lag to a read at its version."""
    lags: list[float] = []

    async def one() -> None:
        version = await restock(writer, product)
        answered = time.perf_counter()
        await read_at(reader, product, version)
        lags.append(time.perf_counter() - answered)

    tasks = []
    start = time.perf_counter()
    for n in range(int(LOAD_RATE * seconds)):
        await asyncio.sleep(max(0.0, start + n / LOAD_RATE - time.perf_counter()))
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return lags


async def read_store_outage(
    shop: Topology, writer: GraphQLClient, reader: GraphQLClient, product: str
) -> float:
    """Seconds from the read store's return to the last write made meanwhile being read."""
    assert shop.ferretdb.process is not None
    shop.ferretdb.process.send_signal(signal.SIGSTOP)
    version = 0
    try:
        down_until = time.perf_counter() + 3
        while time.perf_counter() < down_until:
            version = await restock(writer, product)
    finally:
        shop.ferretdb.process.send_signal(signal.SIGCONT)
    back = time.perf_counter()
    await read_at(reader, product, version)
    return time.perf_counter() - back


async def write_store_outage(
    shop: Topology, writer: GraphQLClient, product: str
) -> tuple[float, float]:
    """Seconds a command takes to fail with the write store stopped, and from its
    restart to the first command accepted."""
    await asyncio.to_thread(shop.postgres.stop)
    began = time.perf_counter()
    answer = await writer.post(REFUSABLE, {"id": product})
    failed_in = time.perf_counter() - began
    codes = [e["code"] for e in answer["restockProduct"]["errors"]]
    if codes != ["UNAVAILABLE"]:
        raise RuntimeError(f"expected UNAVAILABLE, got {answer}")
    await asyncio.to_thread(shop.postgres.start)
    back = time.perf_counter()
    accepted = False
    while not accepted:  # each attempt answers at once, UNAVAILABLE until it is back
        accepted = (await writer.post(REFUSABLE, {"id": product}))["restockProduct"]["success"]
    return failed_in, time.perf_counter() - back


REFUSABLE = """mutation($id: ID!) {
  restockProduct(id: $id, quantity: 1) { success errors { code } } }"""


async def read_at(reader: GraphQLClient, product: str, version: int) -> dict[str, Any]:
    """The product at ``version``; a read, so a pooled connection the server had closed
    meanwhile (idle through a fail-over) is simply tried again."""
    resets = 0
    while True:
        try:
            return await reader.post(READ, {"id": product, "v": version})
        except NotYetConsistent:
            continue
        except aiohttp.ClientConnectionError:
            resets += 1
            if resets > 3:
                raise


async def failover(
    apis: list[Process], relays: list[Process], writer: GraphQLClient, reader: GraphQLClient,
    product: str,
) -> float:  # fmt: skip
    """Seconds from kill -9 of the lease holder to the first write readable after it."""
    async with aiohttp.ClientSession() as session:
        while True:
            leaders = [r for r in relays if await r.leads(session)]
            if len(leaders) == 1:
                break
            await asyncio.sleep(0.05)
        old = leaders[0]
        killed = time.perf_counter()
        old.stop(signal.SIGKILL)
        version = (await writer.post(RESTOCK, {"id": product}))["restockProduct"]["version"]
        await read_at(reader, product, version)
        took = time.perf_counter() - killed
        progress(f"P10: fail-over in {took:.2f} s")
        old.start()
        await old.ready(session)
    return took


async def pg_read_store(stores: Stores, options: Options) -> list[Row]:
    """P4 and P5 with FerretDB on PostgreSQL as the read store (the production topology's):
    a PostgreSQL write store, one relay process, and the bench server as an ``api``
    process (it has the no-op query); P5 in process against the same FerretDB."""
    folder = stores.folder / "pg-read-store"
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    async with topology(folder, stores.cache_dir, relays=1, apis=1) as shop:
        async with GraphQLClient(f"{shop.apis[0].url}/graphql", 8) as writer:
            created = [
                (await writer.post(CREATE, {"sku": f"PG-{n}-{uuid.uuid4().hex[:6]}"}))[
                    "createProduct"
                ]
                for n in range(50)
            ]
        products, version = [c["id"] for c in created], max(c["version"] for c in created)
        server = ServerProcess(None, folder / "bench-server.log", env=shop.env, role="api")
        async with server:
            await caught_up(server, version)
            progress("P4-pg: product and no-op queries, FerretDB on PostgreSQL")
            rows = await measures.product_queries(
                server, products, version, options, random.Random(7), "-pg"
            )
        store = await connect_read_store(shop.mongodb_url)
        try:
            # FerretDB on PostgreSQL loads 100k orders in tens of minutes: a fifth of them
            pg_options = dataclasses.replace(
                options, history_orders=min(options.history_orders, PG_HISTORY_ORDERS)
            )
            rows += await measures.p5_order_history(stores, store, pg_options, "-pg")
        finally:
            await store.client.close()
    return rows
