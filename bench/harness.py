"""What every measure shares: the embedded stores, a server process, load and statistics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from app.auth import mint
from app.ferretdb import EmbeddedFerretDB, ensure_binary, free_port, index_document_ids
from domain.identity import ADMIN_ROLE

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100), nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


# The bench server verifies tokens like any server; the load generator signs its own.
BENCH_SECRET = "bench-secret-not-for-production-0123456789"


def admin_token() -> str:
    return mint(BENCH_SECRET, "bench", [ADMIN_ROLE], ttl=24 * 3600)


@dataclass
class Row:
    """One line of the result table: a measure next to its baseline."""

    id: str
    what: str
    measured: float
    baseline: float | None
    unit: str
    goal: str
    ratio: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ratio is None and self.baseline:
            self.ratio = self.measured / self.baseline

    def met(self) -> bool | None:
        """Whether the goal (``">= 0.6"`` on the ratio, ``"<= 25 ms"`` on the value) holds."""
        if not self.goal:
            return None
        op, number, *_ = self.goal.split()
        value = self.ratio if self.ratio is not None and not _is_absolute(self.goal) else None
        if value is None:
            value = self.measured
        return value >= float(number) if op == ">=" else value <= float(number)


def _is_absolute(goal: str) -> bool:
    return len(goal.split()) > 2  # "<= 25 ms" names a unit; "<= 0.6" is a ratio


def progress(message: str) -> None:
    print(f"  · {message}", file=sys.stderr, flush=True)


@dataclass
class Stores:
    """A fresh SQLite write store and a read store, in one folder.

    Without ``external_mongodb_url`` the read store is the embedded FerretDB under
    ``folder/ferretdb``, owned like in production: by the server process while it
    runs (``cqrs-shop serve`` on the embedded defaults), and by :meth:`read_store`
    for the in-process measures.
    """

    folder: Path
    cache_dir: Path
    external_mongodb_url: str | None = None

    @property
    def database_url(self) -> str:
        return f"sqlite+aiosqlite:///{self.folder / 'shop.db'}"

    @property
    def frozen_database_url(self) -> str:
        """A copy of the write store as seeded (see :meth:`freeze_outbox`)."""
        return f"sqlite+aiosqlite:///{self.folder / 'seeded.db'}"

    def freeze_outbox(self) -> None:
        """Copies the seeded write store, so measures that replay the outbox (P6) work on
        the same events whatever the HTTP measures wrote after seeding."""
        with (
            contextlib.closing(sqlite3.connect(self.folder / "shop.db")) as source,
            contextlib.closing(sqlite3.connect(self.folder / "seeded.db")) as copy,
        ):
            source.backup(copy)

    @property
    def ferretdb_dir(self) -> Path | None:
        return None if self.external_mongodb_url else self.folder / "ferretdb"

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "SHOP_DATA_DIR": str(self.folder),
            "DATABASE_URL": self.database_url,
            "SHOP_AUTH_SECRET": BENCH_SECRET,
        }
        env.pop("MONGODB_URL", None)
        if self.external_mongodb_url:
            env["MONGODB_URL"] = self.external_mongodb_url
        return env

    async def index_ids(self) -> None:
        """What the server does for the embedded FerretDB (see app.ferretdb)."""
        if self.ferretdb_dir is not None:
            await asyncio.to_thread(index_document_ids, self.ferretdb_dir)

    @contextlib.asynccontextmanager
    async def read_store(self) -> AsyncIterator[str]:
        """The read store's URL, starting the embedded FerretDB for the duration."""
        if self.ferretdb_dir is None:
            assert self.external_mongodb_url is not None
            yield self.external_mongodb_url
            return
        binary = await asyncio.to_thread(ensure_binary, self.cache_dir, progress)
        ferretdb = EmbeddedFerretDB(binary, self.ferretdb_dir)
        url = await asyncio.to_thread(ferretdb.start)
        try:
            yield url
        finally:
            ferretdb.stop()


class ServerProcess:
    """``python -m bench.server``: the shop app plus no-op fields, one uvicorn process."""

    def __init__(
        self,
        stores: Stores | None,
        log: Path,
        env: dict[str, str] | None = None,
        role: str = "all",
    ) -> None:
        self.stores = stores
        self.log = log
        self.env = env
        self.role = role
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/graphql"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    async def __aenter__(self) -> ServerProcess:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                [sys.executable, "-m", "bench.server", "--port", str(self.port),
                 "--role", self.role],
                env=self.env if self.env is not None else self._stores_env(),
                cwd=ROOT, stdout=log, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as session:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"bench server exited:\n{self.log.read_text()[-3000:]}")
                with contextlib.suppress(aiohttp.ClientError):
                    ready = f"http://127.0.0.1:{self.port}/readyz"
                    async with session.get(ready) as response:
                        if response.status == 200:
                            return self
                if time.monotonic() > deadline:
                    raise RuntimeError("bench server not ready within 60 s")
                await asyncio.sleep(0.1)

    async def __aexit__(self, *_: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _stores_env(self) -> dict[str, str]:
        assert self.stores is not None
        return self.stores.env()

    def cpu_meter(self) -> CpuMeter:
        assert self.process is not None
        return CpuMeter(self.process.pid)

    async def cache_counts(self) -> tuple[float, float]:
        """The server's read-cache hits and misses so far (from /metrics)."""
        counts = {"shop_read_cache_hits_total": 0.0, "shop_read_cache_misses_total": 0.0}
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.port}/metrics") as response,
        ):
            for line in (await response.text()).splitlines():
                name, _, value = line.partition(" ")
                if name in counts:
                    counts[name] = float(value)
        return counts["shop_read_cache_hits_total"], counts["shop_read_cache_misses_total"]

    def rss_bytes(self) -> int:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


class NotYetConsistent(Exception):
    """The server answered NOT_YET_CONSISTENT: the wait for minVersion timed out."""


class GraphQLClient:
    """POSTs GraphQL over one keep-alive connection pool; raises on any GraphQL error."""

    def __init__(self, url: str, connections: int, token: str | None = None) -> None:
        self.url = url
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, force_close=False),
            headers={"Authorization": f"Bearer {token or admin_token()}"},
        )

    async def __aenter__(self) -> GraphQLClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.session.close()

    async def post(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"query": query, "variables": variables or {}}
        async with self.session.post(self.url, json=body) as response:
            answer: dict[str, Any] = await response.json(loads=json.loads)
        if errors := answer.get("errors"):
            if all(e.get("extensions", {}).get("code") == "NOT_YET_CONSISTENT" for e in errors):
                raise NotYetConsistent(errors)
            raise RuntimeError(f"GraphQL errors: {errors}")
        data: dict[str, Any] = answer["data"]
        return data


@dataclass
class Load:
    """What a closed-loop run did: requests per second and latencies (seconds)."""

    count: int
    seconds: float
    latencies: list[float]
    cpu_ms: dict[str, float] = field(default_factory=dict)
    """CPU milliseconds per completed request, per process kind (see :class:`CpuMeter`)."""

    @property
    def rate(self) -> float:
        return self.count / self.seconds


async def closed_loop(
    call: Callable[[int], Awaitable[Any]],
    concurrency: int,
    seconds: float,
    warmup: float = 1.0,
    cpu: CpuMeter | None = None,
) -> Load:
    """``concurrency`` workers call ``call(n)`` back to back for ``warmup`` + ``seconds``.

    The rate is the calls completed inside the measured window divided by its length
    (calls in flight at either edge count where they end); the latencies are those of
    the calls started inside it."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from, stop_at = start + warmup, start + warmup + seconds
    latencies: list[float] = []
    completed = 0
    counter = iter(range(10**12))

    async def worker() -> None:
        nonlocal completed
        while (now := loop.time()) < stop_at:
            await call(next(counter))
            done = loop.time()
            if now >= measure_from:
                latencies.append(done - now)
            if measure_from <= done <= stop_at:
                completed += 1

    marks: list[dict[str, float]] = []
    if cpu is not None:
        loop.call_at(measure_from, lambda: marks.append(cpu.read()))
        loop.call_at(stop_at, lambda: marks.append(cpu.read()))
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    used: dict[str, float] = {}
    if len(marks) == 2 and completed:
        used = {k: (marks[1][k] - marks[0][k]) * 1000 / completed for k in marks[0]}
    return Load(completed, seconds, latencies, used)


class CpuMeter:
    """Cumulative CPU seconds (user + system, from ``/proc``) of the server process, of
    the read store it runs (its FerretDB child, if any) and of this client process."""

    def __init__(self, server_pid: int) -> None:
        self.server = server_pid
        self.read_store = [pid for pid in _children(server_pid) if b"ferretdb" in _cmdline(pid)]

    def read(self) -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "server": _cpu_seconds(self.server),
            "read_store": sum(_cpu_seconds(pid) for pid in self.read_store),
            "client": usage.ru_utime + usage.ru_stime,
        }


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


async def at_least(call: Callable[[int], Awaitable[Any]], calls: int, seconds: float) -> Load:
    """One caller, back to back, until both ``calls`` calls and ``seconds`` have passed
    (for calls that may each take longer than a closed-loop run)."""
    loop = asyncio.get_running_loop()
    await call(-1)  # warm-up
    latencies: list[float] = []
    start = loop.time()
    while len(latencies) < calls or loop.time() - start < seconds:
        began = loop.time()
        await call(len(latencies))
        latencies.append(loop.time() - began)
    return Load(len(latencies), loop.time() - start, latencies)


async def alternating(
    calls: Mapping[str, Callable[[int], Awaitable[Any]]],
    seconds: float,
    warmup: float = 1.0,
    min_rounds: int = 20,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """One caller makes every call once per round, in a new random order each round, so
    the slow moments of a shared machine fall on all of them alike; rounds go on for
    ``seconds`` after ``warmup`` and at least ``min_rounds`` are measured. The latencies
    (seconds) of each call, of the rounds that began after the warm-up."""
    rng = rng or random.Random(0)
    names = list(calls)
    latencies: dict[str, list[float]] = {name: [] for name in names}
    measure_from = clock() + warmup
    stop_at = measure_from + seconds
    measured = 0
    count = 0
    while (began_round := clock()) < stop_at or measured < min_rounds:
        rng.shuffle(names)
        for name in names:
            began = clock()
            await calls[name](count)
            count += 1
            if began_round >= measure_from:
                latencies[name].append(clock() - began)
        measured += began_round >= measure_from
    return latencies


class Subscription:
    """One graphql-transport-ws connection carrying one subscription."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, url: str, query: str, variables: dict[str, Any]
    ) -> AsyncIterator[Subscription]:
        protocol = Subprotocol("graphql-transport-ws")
        async with connect(
            url, subprotocols=[protocol], open_timeout=60, max_queue=None
        ) as connection:
            token = {"Authorization": f"Bearer {admin_token()}"}
            init = {"type": "connection_init", "payload": token}
            await connection.send(json.dumps(init))
            ack = json.loads(await connection.recv())
            assert ack["type"] == "connection_ack", ack
            payload = {"query": query, "variables": variables}
            await connection.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
            yield cls(connection)

    async def next(self) -> dict[str, Any]:
        message = json.loads(await self.connection.recv())
        if message["type"] != "next" or message["payload"].get("errors"):
            raise RuntimeError(f"subscription failed: {message}")
        data: dict[str, Any] = message["payload"]["data"]
        return data


def summary(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    """p50/p95/p99/max of ``values`` in milliseconds (by default)."""
    return {
        "p50": percentile(values, 50) * scale,
        "p95": percentile(values, 95) * scale,
        "p99": percentile(values, 99) * scale,
        "max": (max(values) if values else float("nan")) * scale,
        "mean": (statistics.fmean(values) if values else float("nan")) * scale,
        "n": len(values),
    }


PROJECTIONS = "{ projections { name checkpoint headVersion } }"


async def caught_up(server: ServerProcess, version: int) -> None:
    """Waits (with progress) until every projection of the server has reached ``version``."""
    async with GraphQLClient(server.url, 1) as client:
        deadline = time.monotonic() + 600
        while True:
            states = (await client.post(PROJECTIONS))["projections"]
            behind = min(int(p["checkpoint"]) for p in states)
            if behind >= version:
                return
            progress(f"relay catching up: {behind}/{version}")
            if time.monotonic() > deadline:
                raise RuntimeError("the relay did not catch up within 10 minutes")
            await asyncio.sleep(1)
