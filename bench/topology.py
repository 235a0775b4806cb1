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
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from app.ferretdb import EmbeddedFerretDB, ensure_binary, free_port
from bench.harness import (
    BENCH_SECRET,
    ROOT,
    GraphQLClient,
    NotYetConsistent,
    Row,
    Subscription,
    progress,
    summary,
)
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


@contextlib.asynccontextmanager
async def topology(
    folder: Path, cache_dir: Path
) -> AsyncIterator[tuple[list[Process], list[Process]]]:
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
        relays = [Process("relay", env, folder / f"relay{n}.log") for n in range(2)]
        apis = [Process("api", env, folder / f"api{n}.log") for n in range(2)]
        processes = [*relays, *apis]
        for process in processes:
            process.start()
        async with aiohttp.ClientSession() as session:
            for process in processes:
                await process.ready(session)
        yield apis, relays
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
    async with topology(folder, cache_dir) as (apis, relays):
        writer = GraphQLClient(f"{apis[0].url}/graphql", 4)
        reader = GraphQLClient(f"{apis[1].url}/graphql", 4)
        async with writer, reader:
            created = (await writer.post(CREATE, {"sku": f"P10-{uuid.uuid4().hex[:8]}"}))[
                "createProduct"
            ]
            product = created["id"]
            await read_at(reader, product, created["version"])
            progress(f"P10: {writes} writes on one api process, read on the other")
            reads = []
            for _ in range(writes):
                version = (await writer.post(RESTOCK, {"id": product}))["restockProduct"]["version"]
                began = time.perf_counter()
                await read_at(reader, product, version)
                reads.append(time.perf_counter() - began)
            progress("P10: the same, heard by a subscription on the other")
            heard = []
            ws = f"ws://127.0.0.1:{apis[1].port}/graphql"
            async with Subscription.open(ws, FOLLOW, {"id": product}) as subscription:
                await subscription.next()  # the document now
                for _ in range(min(writes, 200)):
                    began = time.perf_counter()
                    version = (await writer.post(RESTOCK, {"id": product}))["restockProduct"][
                        "version"
                    ]
                    while (await subscription.next())["productUpdated"]["version"] < version:
                        pass
                    heard.append(time.perf_counter() - began)
            takeovers = [
                await failover(apis, relays, writer, reader, product) for _ in range(failovers)
            ]
    read_summary, heard_summary, takeover_summary = (
        summary(reads),
        summary(heard),
        summary(takeovers),
    )
    return [
        Row("P10a", "cross-process read of one's write, p50 (ms)", read_summary["p50"], None,
            "ms", "<= 30 ms", detail=read_summary),
        Row("P10b", "cross-process read of one's write, p99 (ms)", read_summary["p99"], None,
            "ms", "<= 100 ms", detail=read_summary),
        Row("P10c", "cross-process subscription hears a write, p50 (ms)", heard_summary["p50"],
            None, "ms", "", detail=heard_summary),
        Row("P10d", "relay fail-over after kill -9, median of "
            f"{failovers} (s)", takeover_summary["p50"] / 1000, None, "s", "<= 3 s",
            detail={"seconds": [round(t, 2) for t in takeovers]}),
    ]  # fmt: skip


async def read_at(reader: GraphQLClient, product: str, version: int) -> dict[str, Any]:
    while True:
        try:
            return await reader.post(READ, {"id": product, "v": version})
        except NotYetConsistent:
            continue


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
