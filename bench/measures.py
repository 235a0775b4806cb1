"""P1-P9: each measure runs next to its baseline in the same run, on the same stores."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import random
import sqlite3
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa
from pymongo import AsyncMongoClient, InsertOne, UpdateOne
from pymongo.errors import BulkWriteError

from app.auth import mint
from app.bootstrap import ReadStore
from bench import profile
from bench.harness import (
    ROOT,
    GraphQLClient,
    NotYetConsistent,
    Row,
    ServerProcess,
    Stores,
    Subscription,
    admin_token,
    alternating,
    at_least,
    caught_up,
    closed_loop,
    progress,
    summary,
)
from domain import model, outbox
from domain.bus import CommandBus
from domain.commands import AddressData, RegisterCustomer
from domain.events import CUSTOMER_REGISTERED, ORDER_PLACED, RecordedEvent
from domain.identity import ADMIN_ROLE
from domain.store import create_engine, create_schema
from projections import history
from projections.cache import ReadCache
from projections.history import OrderHistoryProjection
from projections.lease import Lease
from projections.progress import Progress
from projections.projection import Write, coalesce
from projections.readdb import ReadDatabase
from projections.registry import all_projections
from projections.relay import (
    Relay,
    apply_writes,
    prepare_collections,
)

PLACE = """mutation($input: PlaceOrderInput!) {
  placeOrder(input: $input) { success id version errors { code message } } }"""
RESTOCK = """mutation($id: ID!) {
  restockProduct(id: $id, quantity: 1) { success version errors { code message } } }"""
ORDER = "query($id: ID!, $v: Version) { order(id: $id, minVersion: $v) { id status version } }"
PRODUCT = """query($id: ID!, $v: Version) {
  product(id: $id, minVersion: $v) { id name priceCents stockAvailable version } }"""
PRODUCT_UPDATED = """subscription($id: ID!) {
  productUpdated(id: $id) { id stockAvailable version } }"""
EVENTS = """subscription($after: Version) {
  events(afterVersion: $after, types: ["OrderPlaced"]) { version } }"""


@dataclass
class Options:
    seconds: float = 5.0
    concurrency: int = 16
    subscribers: tuple[int, ...] = (1000, 5000)
    history_orders: int = 100_000
    low_rate: float = 20.0
    """P3 again at this light load (orders/s), to show the lag that is not queueing."""
    commands: int = 3000
    seed_orders: int = 500
    repeats: int = 3
    """Runs of the cheap measures (P1, P2, P4): the table shows the median and range."""


@dataclass
class Shop:
    """The seeded shop the HTTP measures run against."""

    stores: Stores
    server: ServerProcess
    options: Options
    products: list[str]
    customers: list[str]
    version: int = 0
    results: dict[str, Row] = field(default_factory=dict)
    relay_capacity: float = 0.0
    """Events per second the relay applied while P1 kept it busy."""
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    def order_input(self) -> dict[str, Any]:
        return {
            "customerId": self.rng.choice(self.customers),
            "lines": [{"productId": self.rng.choice(self.products), "quantity": 1}],
        }

    async def place(self, client: GraphQLClient) -> dict[str, Any]:
        result: dict[str, Any] = (await client.post(PLACE, {"input": self.order_input()}))[
            "placeOrder"
        ]
        if not result["success"]:
            raise RuntimeError(f"placeOrder refused: {result['errors']}")
        self.version = max(self.version, int(result["version"]))
        return result


async def p1_place_order(shop: Shop) -> Row:
    o = shop.options
    cpu = shop.server.cpu_meter()
    async with GraphQLClient(shop.server.url, o.concurrency) as client:
        first, began = shop.version, time.perf_counter()
        placed = await closed_loop(lambda _: shop.place(client), o.concurrency, o.seconds, cpu=cpu)
        # The baseline runs on a quiet server: the relay has drained placeOrder's backlog.
        await caught_up(shop.server, shop.version)
        # The relay was busy from the first order to the end of the backlog: its capacity.
        shop.relay_capacity = (shop.version - first) / (time.perf_counter() - began)
        noop = await closed_loop(
            lambda _: client.post("mutation { noop }"), o.concurrency, o.seconds, cpu=cpu
        )
    return Row(
        "P1", "placeOrder over HTTP ÷ no-op mutation", placed.rate, noop.rate, "req/s", ">= 0.4",
        detail={"latency_ms": summary(placed.latencies), "noop_latency_ms": summary(noop.latencies),
                "concurrency": o.concurrency, "cpu_ms_per_request": placed.cpu_ms,
                "relay_events_per_s": shop.relay_capacity,
                "noop_cpu_ms_per_request": noop.cpu_ms},
    )  # fmt: skip


P3_SAMPLES = 600
"""Orders per P3 run, at least: enough for a p99 (six beyond it)."""


async def p3_lag(shop: Shop, fixed_rate: float | None = None) -> list[Row]:
    """Open loop at half the relay's measured capacity (what it applied while P1 kept it
    busy), or at ``fixed_rate``: response → minVersion read, and → subscription message.

    Below capacity the lag is steady, whatever the run's length; the detail has each
    half's p99 to show it. Writes and reads go through separate connection pools."""
    o = shop.options
    capacity = shop.relay_capacity or shop.results["P1"].measured
    rate = fixed_rate or capacity / 2
    suffix, goal = ("-low", "") if fixed_rate else ("", "<= 100 ms")
    loop = asyncio.get_running_loop()
    answered: dict[int, float] = {}
    arrived: dict[int, float] = {}
    query_lags: list[float] = []
    all_arrived = asyncio.Event()
    retries = 0
    async with (
        GraphQLClient(shop.server.url, 64) as client,
        GraphQLClient(shop.server.url, 64) as reader,
        Subscription.open(shop.server.ws_url, EVENTS, {"after": shop.version}) as events,
    ):

        async def listen() -> None:
            while True:
                message = await events.next()
                arrived[int(message["events"]["version"])] = loop.time()
                if answered and all(v in arrived for v in answered):
                    all_arrived.set()

        async def one() -> None:
            nonlocal retries
            result = await shop.place(client)
            version, responded = int(result["version"]), loop.time()
            answered[version] = responded
            while True:  # past the server's consistency timeout: ask again, as a client would
                try:
                    await reader.post(ORDER, {"id": result["id"], "v": version})
                    break
                except NotYetConsistent:
                    retries += 1
            query_lags.append(loop.time() - responded)

        listener = asyncio.create_task(listen())
        tasks = []
        start = loop.time()
        for n in range(max(int(rate * o.seconds), P3_SAMPLES)):
            await asyncio.sleep(max(0.0, start + n / rate - loop.time()))  # pacing, not sync
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        while not all(v in arrived for v in answered):  # every order's event, or fail
            all_arrived.clear()
            await asyncio.wait_for(all_arrived.wait(), 120)
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
    message_lags = [arrived[v] - answered[v] for v in answered]
    q, m = summary(query_lags), summary(message_lags)
    half = len(query_lags) // 2
    steady = {"first_half_p99": summary(query_lags[:half])["p99"],
              "second_half_p99": summary(query_lags[half:])["p99"]}  # fmt: skip
    return [
        Row(f"P3{suffix}", f"lag: response → minVersion read answered, at {rate:.0f}/s",
            q["p99"], None, "ms p99", goal,
            detail={"lag_ms": q, "rate": rate, "relay_capacity": capacity, "timeouts": retries,
                    **steady}),
        Row(f"P3s{suffix}", f"lag: response → subscription message, at {rate:.0f}/s",
            m["p99"], None, "ms p99", goal, detail={"lag_ms": m, "rate": rate}),
    ]  # fmt: skip


async def p4_product_query(shop: Shop) -> list[Row]:
    return await product_queries(
        shop.server, shop.products, shop.version, shop.options, shop.rng, ""
    )


PRODUCT_FROM_STORE = """query($id: ID!, $v: Version) {
  productFromStore(id: $id, minVersion: $v) { id name priceCents stockAvailable version } }"""


async def product_queries(
    server: ServerProcess,
    products: list[str],
    version: int,
    o: Options,
    rng: random.Random,
    label: str,
) -> list[Row]:
    """P4: ``product(id, minVersion)`` ÷ ``{ noop }``, as served (through the read cache,
    its hit ratio in the row), and P4s: the same read from the store every time (the
    bench server's ``productFromStore``: what a cold cache costs)."""
    cpu = server.cpu_meter()
    async with GraphQLClient(server.url, o.concurrency) as client:
        before = await server.cache_counts()
        read = await closed_loop(
            lambda _: client.post(PRODUCT, {"id": rng.choice(products), "v": version}),
            o.concurrency, o.seconds, cpu=cpu,
        )  # fmt: skip
        after = await server.cache_counts()
        stored = await closed_loop(
            lambda _: client.post(PRODUCT_FROM_STORE, {"id": rng.choice(products), "v": version}),
            o.concurrency, o.seconds, cpu=cpu,
        )  # fmt: skip
        noop = await closed_loop(
            lambda _: client.post("{ noop }"), o.concurrency, o.seconds, cpu=cpu
        )
    hits, misses = (after[0] - before[0]), (after[1] - before[1])
    return [
        Row(
            f"P4{label}", "product(id, minVersion) over HTTP ÷ no-op query", read.rate,
            noop.rate, "req/s", ">= 0.6",
            detail={"latency_ms": summary(read.latencies),
                    "noop_latency_ms": summary(noop.latencies),
                    "cpu_ms_per_request": read.cpu_ms, "noop_cpu_ms_per_request": noop.cpu_ms,
                    "cache_hit_ratio": hits / max(1, hits + misses)},
        ),
        Row(
            f"P4s{label}", "the same read from the store every time (no cache) ÷ no-op query",
            stored.rate, noop.rate, "req/s", "",
            detail={"latency_ms": summary(stored.latencies), "cpu_ms_per_request": stored.cpu_ms},
        ),
    ]  # fmt: skip


# P9: what refusing costs, next to the cheapest request the server answers.

ADMIN_MUTATION = 'mutation { restockProduct(id: "p9", quantity: 1) { success errors { code } } }'
OTHER_SECRET = "not-the-bench-secret-0123456789abcdef"
ANONYMOUS = None


def graphql_body(query: str, vary: bool = True) -> Callable[[int], bytes]:
    """The JSON body of ``query``; if ``vary``, with a comment numbered per request: a new
    text each time, so the server's parse cache never answers for it (an abuser can vary
    a document as cheaply, by one comment token)."""
    if not vary:
        body = json.dumps({"query": query}).encode()
        return lambda _: body
    head = json.dumps({"query": query})[:-2].encode() + b"\\n# "
    return lambda n: head + str(n).encode() + b'"}'


@dataclass(frozen=True)
class Probe:
    """One kind of request P9 sends, and the answer it must get (see :func:`answer_of`)."""

    id: str
    what: str
    expected: str
    body: Callable[[int], bytes]
    token: str | None = "admin"


PRODUCT_BY_ID = "query($id: ID!) { product(id: $id) { id } }"
PRODUCTS_AFTER = "query($after: String) { products(first: 10, after: $after) { totalCount } }"
OPERATOR_CURSOR = base64.urlsafe_b64encode(
    json.dumps(["NAME_ASC", {"$regex": "^c"}, ""]).encode()
).decode()


def variables_body(query: str, variables: dict[str, Any]) -> Callable[[int], bytes]:
    """The JSON body of ``query`` with ``variables``, the same each time."""
    body = json.dumps({"query": query, "variables": variables}).encode()
    return lambda _: body


def refusal_probes() -> list[Probe]:
    """``{ __typename }`` first (the baseline), then one probe per way of refusing."""
    dashboards = [f"a{i}: dashboard {{ version }}" for i in range(2000)]
    page = "products(first: 100) { edges { node { id name } } }"
    refused = "200 LIMIT_EXCEEDED"
    return [
        # What a client sends again and again: parsed and validated once, then cached.
        Probe("typename", "{ __typename }", "200 answered", graphql_body("{ __typename }", False)),
        Probe("body", "a 1 MB body", "413 LIMIT_EXCEEDED SHOP_MAX_BODY_BYTES",
              graphql_body("{ __typename }" + " " * 1_000_000)),
        Probe("tokens", "a 60 KB document of 30,000 fields", f"{refused} SHOP_MAX_TOKENS",
              graphql_body("{ " + "a " * 30_000 + "}")),
        Probe("length", "a 200 KB document, mostly comments",
              f"{refused} SHOP_MAX_DOCUMENT_LENGTH",
              graphql_body(("# " + "x" * 998 + "\n") * 200 + "{ __typename }")),
        # Aliases are counted while the tokens are, before parsing: the 31st refuses.
        Probe("aliases-2000", "2,000 aliases of dashboard (12,002 tokens)",
              f"{refused} SHOP_MAX_ALIASES", graphql_body("{ " + " ".join(dashboards) + " }")),
        Probe("aliases-300", "300 aliases of dashboard (1,802 tokens)",
              f"{refused} SHOP_MAX_ALIASES",
              graphql_body("{ " + " ".join(dashboards[:300]) + " }")),
        Probe("depth", "fields nested 13 deep", f"{refused} SHOP_MAX_DEPTH",
              graphql_body("{ " + "node { " * 12 + "id" + " }" * 12 + " }")),
        Probe("pages-50", "50 aliases of products(first: 100)", f"{refused} SHOP_MAX_ALIASES",
              graphql_body("{ " + " ".join(f"p{i}: {page}" for i in range(50)) + " }")),
        Probe("cost", "20 aliases of products(first: 100), cost 8,020",
              f"{refused} SHOP_MAX_COST",
              graphql_body("{ " + " ".join(f"p{i}: {page}" for i in range(20)) + " }")),
        # Keys and arguments no read can use: refused before any store or cache.
        Probe("long-id", "product(id) with a 200 KB id", "200 BAD_USER_INPUT",
              variables_body(PRODUCT_BY_ID, {"id": "x" * 200_000})),
        Probe("search", "products(filter: {search}) with 200 KB", "200 BAD_USER_INPUT",
              variables_body(PRODUCTS_AFTER.replace("after: $after", "filter: {search: $s}")
                             .replace("$after: String", "$s: String"), {"s": "mug " * 50_000})),
        Probe("cursor", "products(after) naming a $regex operator", "200 BAD_USER_INPUT",
              variables_body(PRODUCTS_AFTER, {"after": OPERATOR_CURSOR})),
        # Bodies that are no GraphQL request: refused while parsing the JSON.
        Probe("json-depth", "a JSON body nested 100,000 deep", "400 BAD_REQUEST",
              lambda _: b'{"query": "{ __typename }", "variables": {"a": '
              + b"[" * 100_000 + b"]" * 100_000 + b"}}"),
        Probe("surrogate", "a lone surrogate in the variables", "400 BAD_REQUEST",
              lambda n: b'{"query": "query($id: ID!) { product(id: $id) { id } }", '
              b'"variables": {"id": "\\ud800%d"}}' % n),
        Probe("anonymous", "restockProduct without a token", "200 UNAUTHENTICATED",
              graphql_body(ADMIN_MUTATION), ANONYMOUS),
        Probe("bad-token", "restockProduct, token signed with another key",
              "200 UNAUTHENTICATED", graphql_body(ADMIN_MUTATION),
              mint(OTHER_SECRET, "bench", [ADMIN_ROLE], ttl=24 * 3600)),
    ]  # fmt: skip


def answer_of(status: int, answer: Any) -> str:
    """How the server answered, in a few words: the status, then the first error's code
    and ``limit`` (``"413 LIMIT_EXCEEDED SHOP_MAX_BODY_BYTES"``), a command result's
    error code (``"200 UNAUTHENTICATED"``), or ``"answered"`` if nothing was refused."""
    if not isinstance(answer, dict):
        return f"{status} unreadable"
    errors = answer.get("errors")
    if isinstance(errors, list) and errors:
        first = errors[0] if isinstance(errors[0], dict) else {}
        extensions = first.get("extensions") or {}
        words = [str(extensions.get("code", "ERROR"))]
        if "limit" in extensions:
            words.append(str(extensions["limit"]))
        return " ".join([str(status), *words])
    data = answer.get("data")
    for result in data.values() if isinstance(data, dict) else ():
        if isinstance(result, dict) and isinstance(result.get("errors"), list) and result["errors"]:
            return f"{status} {result['errors'][0].get('code', 'ERROR')}"
    return f"{status} answered"


async def p9_refusals(shop: Shop) -> list[Row]:
    """Each refused request's latency ÷ ``{ __typename }``'s, one caller sending them in
    turn (a new random order each round, each kind on its own keep-alive connection, so
    a refusal that closes its connection pays the reconnect itself)."""
    probes = refusal_probes()
    answers: dict[str, Counter[str]] = {probe.id: Counter() for probe in probes}
    json_type = {"Content-Type": "application/json"}
    async with contextlib.AsyncExitStack() as stack:

        def sender(probe: Probe) -> Callable[[int], Awaitable[None]]:
            token = admin_token() if probe.token == "admin" else probe.token
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1),
                headers={"Authorization": f"Bearer {token}"} if token else {},
            )
            stack.push_async_callback(session.close)

            async def send(n: int) -> None:
                try:
                    async with session.post(
                        shop.server.url, data=probe.body(n), headers=json_type
                    ) as response:
                        raw = await response.read()
                    try:
                        answer = answer_of(response.status, json.loads(raw))
                    except ValueError:
                        answer = f"{response.status} unreadable"
                except aiohttp.ClientError as error:
                    answer = f"failed: {type(error).__name__}"
                answers[probe.id][answer] += 1
                if answer != probe.expected:
                    expected = probe.expected
                    raise RuntimeError(f"P9 {probe.id}: expected {expected!r}, got {answer!r}")

            return send

        calls = {probe.id: sender(probe) for probe in probes}
        latencies = await alternating(calls, shop.options.seconds, rng=random.Random(9))
    baseline = summary(latencies["typename"])
    rows = []
    for probe in probes[1:]:
        measured = summary(latencies[probe.id])
        rows.append(Row(
            f"P9/{probe.id}", f"refused: {probe.what} ÷ {{ __typename }}", measured["p50"],
            baseline["p50"], "ms p50", "<= 5",
            detail={"latency_ms": measured, "baseline_latency_ms": baseline,
                    "answers": dict(answers[probe.id]), "request_bytes": len(probe.body(0))},
        ))  # fmt: skip
    return rows


P7_CLIENTS = 4
"""Client processes the subscribers are spread over (each parses its share)."""


async def p7_fanout(shop: Shop, subscribers: int, profile_to: Path | None = None) -> Row:
    """``subscribers`` connections, spread over ``P7_CLIENTS`` client processes
    (``bench.subscribers``), watch one product; five restocks, each sent once every
    subscription is open and waiting; the time from the send to each arrival."""
    product, changes = shop.products[0], 5
    before = shop.server.rss_bytes()
    shares = [subscribers // P7_CLIENTS + (n < subscribers % P7_CLIENTS) for n in range(P7_CLIENTS)]
    clients = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.subscribers", shop.server.ws_url, product, str(share),
            str(changes), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        )
        for share in shares if share
    ]  # fmt: skip
    try:
        for client_process in clients:
            assert client_process.stdout is not None
            line = await asyncio.wait_for(client_process.stdout.readline(), 300)
            if not json.loads(line or b"{}").get("ready"):
                raise RuntimeError("a P7 client process failed to subscribe")
        progress(f"P7: {subscribers} subscribers open in {len(clients)} client processes")
        per_subscription = (shop.server.rss_bytes() - before) / subscribers
        sampler = None
        if profile_to is not None and shop.server.process is not None:
            sampler = profile.start(shop.server.process.pid, 10, profile_to)
        latencies = []
        async with GraphQLClient(shop.server.url, 1) as client:
            for _ in range(changes):  # each change once the last has reached everyone
                sent = time.monotonic()
                result = await client.post(RESTOCK, {"id": product})
                version = int(result["restockProduct"]["version"])
                shop.version = max(shop.version, version)
                for client_process in clients:
                    assert client_process.stdout is not None
                    line = await asyncio.wait_for(client_process.stdout.readline(), 300)
                    arrivals = json.loads(line)["arrivals"]
                    if any(v != version for v, _ in arrivals):
                        raise RuntimeError(f"expected version {version}, got {arrivals[:3]}")
                    latencies += [at - sent for _, at in arrivals]
        if sampler is not None:
            sampler.wait(60)
    finally:
        for client_process in clients:
            if client_process.returncode is None:
                client_process.kill()
            await client_process.wait()
    if len(latencies) != subscribers * changes:
        raise RuntimeError(f"{len(latencies)} arrivals of {subscribers * changes}")
    s = summary(latencies)
    return Row(
        f"P7/{subscribers}", f"fan-out of one change to {subscribers} subscribers",
        s["p99"], None, "ms p99", "<= 250 ms" if subscribers >= 5000 else "",
        detail={"latency_ms": s, "rss_per_subscription_kib": per_subscription / 1024,
                "client_processes": len(clients)},
    )  # fmt: skip


async def p2_command_bus(stores: Stores, options: Options) -> list[Row]:
    """The command bus next to plain ``sqlite3`` doing the same writes, like with like:

    - P2a: the bus without grouping, one caller ÷ ``sqlite3``, one transaction per command;
    - P2b: the grouped bus, ``concurrency`` callers ÷ ``sqlite3``, ``concurrency``
      commands per transaction (what grouping does).

    Each side writes ``commands`` RegisterCustomer commands (rows of the customer and
    its outbox event) into a fresh file, after a warm-up of 100; the raw side runs in a
    thread of its own, as the bus's writer does. Plain ``sqlite3``, not aiosqlite: the
    latter's rate is set by thread wake-ups across cores and varies 1.5x run to run.
    """
    n, group = options.commands, options.concurrency
    single = await _bus_rate(stores, "p2a", n, callers=1, group_commit=False)
    raw_single = await asyncio.to_thread(_raw_rate, await _schema(stores, "p2a-raw"), n, 1)
    grouped = await _bus_rate(stores, "p2b", n, callers=group, group_commit=True)
    raw_grouped = await asyncio.to_thread(_raw_rate, await _schema(stores, "p2b-raw"), n, group)
    return [
        Row("P2a", "registerCustomer via the bus, 1 caller ÷ sqlite3, 1 per transaction",
            single, raw_single, "cmd/s", ">= 1.0", detail={"commands": n}),
        Row("P2b", f"the grouped bus, {group} callers ÷ sqlite3, {group} per transaction",
            grouped, raw_grouped, "cmd/s", ">= 1.0", detail={"commands": n}),
    ]  # fmt: skip


async def _schema(stores: Stores, name: str) -> Path:
    path = stores.folder / f"{name}-{uuid.uuid4().hex[:8]}.db"  # fresh for every run
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    await create_schema(engine)
    await engine.dispose()
    return path


async def _bus_rate(stores: Stores, name: str, n: int, callers: int, group_commit: bool) -> float:
    path = await _schema(stores, f"{name}-bus")
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    bus = CommandBus(engine, group_commit=group_commit)
    address = AddressData("1 Main Street", "Berlin", "10115", "DE")
    try:
        for i in range(100):  # warm-up: connections, statement caches
            await bus.execute(RegisterCustomer(f"w{i}@example.com", f"Warm {i}", address))
        counter = iter(range(n))

        async def caller() -> None:
            for i in counter:
                await bus.execute(RegisterCustomer(f"c{i}@example.com", f"Customer {i}", address))

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        return n / (time.perf_counter() - started)
    finally:
        bus.close()
        await engine.dispose()


def _raw_rate(path: Path, n: int, per_transaction: int) -> float:
    """The same rows through plain ``sqlite3``, ``per_transaction`` commands per commit
    (into a file that has the schema already)."""
    db = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
        db.execute(f"PRAGMA {pragma}")
    addr = json.dumps({"line1": "1 Main Street", "city": "Berlin", "postalCode": "10115",
                       "country": "DE"})  # fmt: skip

    def write(i: int, prefix: str) -> None:
        customer_id, now = str(uuid.uuid4()), datetime.now(UTC).isoformat()
        email = f"{prefix}{i}@example.com"
        db.execute(
            "INSERT INTO customers (id, email, email_key, name, address, version,"
            " registered_at) VALUES (?, ?, ?, ?, ?, 1, ?)",
            (customer_id, email, email, f"Customer {i}", addr, now),
        )
        db.execute(
            "INSERT INTO outbox (event_id, type, aggregate_type, aggregate_id,"
            " aggregate_version, data, metadata, occurred_at) VALUES (?, ?, ?, ?, 1, ?, ?, ?)",
            (str(uuid.uuid4()), "CustomerRegistered", "Customer", customer_id,
             json.dumps({"email": email, "name": f"Customer {i}", "address": addr}), "{}", now),
        )  # fmt: skip

    try:
        for i in range(100):
            db.execute("BEGIN IMMEDIATE")
            write(i, "w")
            db.execute("COMMIT")
        started = time.perf_counter()
        for first in range(0, n, per_transaction):
            db.execute("BEGIN IMMEDIATE")
            for i in range(first, min(first + per_transaction, n)):
                write(i, "c")
            db.execute("COMMIT")
        return n / (time.perf_counter() - started)
    finally:
        db.close()


async def p6_relay(stores: Stores, store: ReadStore) -> Row:
    """The relay over the seeded outbox (a frozen copy: the same events in every run),
    all projections, from zero ÷ the same writes sent raw.

    The baseline is the relay's own write list, batch by batch: every projection's
    writes for each batch of ``batch_size`` events, merged as the relay merges them, sent
    with the same chunk size and the same bound on bulk writes in flight, projections
    side by side, as ``_id``-only updates (what the relay sends once it knows the
    versions). What the ratio leaves is the relay's own work: reading the outbox,
    versions, checkpoints, the lease, announcing batches, the progress feed.
    """
    mongo, chunk, batch_size = store.client, store.write_chunk, 500
    engine = create_engine(stores.frozen_database_url)
    async with engine.connect() as conn:
        events = await outbox.read_after(conn, 0, 10**9)
    db = mongo["bench_p6"]
    await mongo.drop_database(db)
    relay = Relay(
        engine, db, all_projections(), Progress(), lease=Lease(engine, db), batch_size=batch_size,
        **store.relay_options,
    )  # fmt: skip
    await relay.setup()
    await stores.index_ids()
    started = time.perf_counter()
    applied = 0
    while count := await relay.run_once():
        applied += count
    relay_seconds = time.perf_counter() - started
    await engine.dispose()

    raw = mongo["bench_p6_raw"]
    await mongo.drop_database(raw)
    projections = all_projections()
    for projection in projections:
        await prepare_collections(raw, projection)
    await stores.index_ids()
    gate = asyncio.Semaphore(store.concurrent_writes or 10**6)
    started = time.perf_counter()
    for first in range(0, len(events), batch_size):
        batch = events[first : first + batch_size]
        parts = [coalesce([w for e in batch for w in p.project(e)]) for p in projections]
        await asyncio.gather(*(_send_raw(raw, part, chunk, gate) for part in parts))
    raw_seconds = time.perf_counter() - started
    await mongo.drop_database(db)
    await mongo.drop_database(raw)
    return Row(
        "P6", "relay events/s (all projections) ÷ the same writes sent raw",
        applied / relay_seconds, applied / raw_seconds, "events/s", ">= 0.3",
        detail={"events": applied, "chunk": chunk, "batch": batch_size,
                "in_flight": store.concurrent_writes},
    )  # fmt: skip


async def _send_raw(db: Any, writes: list[Write], chunk: int, gate: asyncio.Semaphore) -> None:
    """Per collection, in order: inserts unordered, updates by ``_id`` ordered, in chunks."""
    by_collection: dict[str, list[Any]] = {}
    for write in writes:
        operation = write.operation
        if write.guard is not None and write.update is not None:
            operation = UpdateOne({"_id": write.key}, write.update)
        by_collection.setdefault(write.collection, []).append(operation)
    for name, operations in by_collection.items():
        for inserts, run in itertools.groupby(operations, lambda op: isinstance(op, InsertOne)):
            batch = list(run)
            for start in range(0, len(batch), chunk):
                async with gate:
                    try:
                        await db[name].bulk_write(batch[start : start + chunk], ordered=not inserts)
                    except BulkWriteError as error:  # inserts of seeded documents, as the relay
                        if not inserts or any(
                            e["code"] != 11000 for e in error.details["writeErrors"]
                        ):
                            raise


async def p8_drivers(stores: Stores, mongodb_url: str, store: ReadStore) -> Row:
    """The projections' writes for the seeded outbox through PyMongo async ÷ through Motor.

    The frozen copy (as P6): the same writes in every run, not what P1-P7 added."""
    from motor.motor_asyncio import AsyncIOMotorClient

    engine = create_engine(stores.frozen_database_url)
    async with engine.connect() as conn:
        from domain import outbox

        events = await outbox.read_after(conn, 0, 10**9)
    await engine.dispose()
    writes = [w for e in events for p in all_projections() for w in p.project(e)]
    pymongo_client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url)
    motor_client: Any = AsyncIOMotorClient(mongodb_url)
    seconds: dict[str, list[float]] = {"pymongo": [], "motor": []}
    try:
        for round_ in range(3):
            for name, client in (("motor", motor_client), ("pymongo", pymongo_client)):
                database = f"bench_p8_{name}"
                await client.drop_database(database)
                for projection in all_projections():
                    await prepare_collections(pymongo_client[database], projection)
                await stores.index_ids()
                started = time.perf_counter()
                await apply_writes(
                    client[database], writes, store.write_chunk,
                    check_versions=store.check_versions,
                )  # fmt: skip
                seconds[name].append(time.perf_counter() - started)
                await client.drop_database(database)
                progress(f"P8 round {round_ + 1}: {name} {seconds[name][-1]:.2f} s")
    finally:
        await pymongo_client.close()
        motor_client.close()
    best = {name: len(writes) / min(s) for name, s in seconds.items()}
    return Row(
        "P8", "projection writes via PyMongo async ÷ via Motor", best["pymongo"], best["motor"],
        "write/s", ">= 1", detail={"writes": len(writes), "seconds": seconds},
    )  # fmt: skip


async def p5_order_history(
    stores: Stores, store: ReadStore, options: Options, label: str = ""
) -> list[Row]:
    """orderHistory of one customer, read model ÷ JOIN on the write model, at N orders.

    The read model is what the server reads: the customer's history head, then the
    buckets the page needs side by side (``order_history_pages``), straight from the
    store (P5: a cold cache, every read a round trip) and through the server's read
    cache (P5c: what a process serving the page again and again does; its hit ratio
    in the row).

    The N orders are bulk-loaded into both stores from one generator (placing 100k
    orders through the bus and the relay would take most of the run); the read
    model's documents are built by the projections' own code. ``label``: which read
    store (FerretDB on SQLite by default; ``-pg``: on PostgreSQL).
    """
    n, mongo = options.history_orders, store.client
    engine = create_engine(f"sqlite+aiosqlite:///{stores.folder / f'p5{label}.db'}")
    await create_schema(engine)
    db = mongo["bench_p5"]
    await mongo.drop_database(db)
    rng = random.Random(5)
    customers = [str(uuid.uuid4()) for _ in range(max(1, n // 100))]
    products = [(str(uuid.uuid4()), f"SKU-{i:04d}", f"Product {i}", 100 + i) for i in range(200)]
    address = {"line1": "1 Main Street", "city": "Berlin", "postalCode": "10115", "country": "DE"}
    base = datetime(2026, 1, 1, tzinfo=UTC)
    history_projection = OrderHistoryProjection()
    await prepare_collections(db, history_projection)
    registered = [
        RecordedEvent(0, str(uuid.uuid4()), CUSTOMER_REGISTERED, "Customer", c, 1,
                      {"name": "Customer", "email": f"{c}@example.com", "address": address},
                      base)
        for c in customers
    ]  # fmt: skip
    await apply_writes(db, [w for e in registered for w in history_projection.project(e)], 1000)
    await stores.index_ids()
    async with engine.begin() as conn:
        await conn.execute(sa.insert(model.customers), [
            {"id": c, "email": f"{c}@example.com", "email_key": f"{c}@example.com",
             "name": "Customer", "address": address, "version": 1, "registered_at": base}
            for c in customers])  # fmt: skip
        await conn.execute(sa.insert(model.products), [
            {"id": p, "sku": sku, "name": name, "description": "", "category": "bench",
             "price_cents": price, "status": "ACTIVE", "stock_on_hand": 10**6,
             "stock_reserved": 0, "version": 1, "created_at": base, "updated_at": base}
            for p, sku, name, price in products])  # fmt: skip
    batch = 5000
    numbers: Counter[str] = Counter()
    for start in range(0, n, batch):
        order_rows, line_rows, placed = [], [], []
        for i in range(start, min(n, start + batch)):
            order_id, customer = str(uuid.uuid4()), rng.choice(customers)
            numbers[customer] += 1
            placed_at = base + timedelta(seconds=i)
            lines: list[dict[str, Any]] = [
                {"productId": p, "sku": sku, "productName": name, "quantity": 1 + j % 2,
                 "unitPriceCents": price, "lineTotalCents": price * (1 + j % 2)}
                for j, (p, sku, name, price) in enumerate(rng.sample(products, rng.randint(1, 3)))
            ]  # fmt: skip
            total = sum(line["lineTotalCents"] for line in lines)
            order_rows.append({
                "id": order_id, "customer_id": customer, "status": "PLACED",
                "total_cents": total, "shipping_address": address, "placed_at": placed_at,
                "version": 1})  # fmt: skip
            line_rows += [
                {"order_id": order_id, "line_no": j + 1, "product_id": line["productId"],
                 "sku": line["sku"], "product_name": line["productName"],
                 "quantity": line["quantity"], "unit_price_cents": line["unitPriceCents"]}
                for j, line in enumerate(lines)
            ]  # fmt: skip
            placed.append(RecordedEvent(
                position=i + 1, event_id=str(uuid.uuid4()), type=ORDER_PLACED,
                aggregate_type="Order", aggregate_id=order_id, aggregate_version=1,
                data={"customerId": customer, "customerName": "Customer",
                      "customerEmail": f"{customer}@example.com", "lines": lines,
                      "itemCount": sum(line["quantity"] for line in lines), "totalCents": total,
                      "shippingAddress": address, "customerOrderNumber": numbers[customer]},
                occurred_at=placed_at,
            ))  # fmt: skip
        async with engine.begin() as conn:
            await conn.execute(sa.insert(model.orders), order_rows)
            await conn.execute(sa.insert(model.order_lines), line_rows)
        pages = coalesce([w for e in placed for w in history_projection.project(e)])
        await apply_writes(db, pages, store.write_chunk, check_versions=store.check_versions)
        progress(f"P5{label}: loaded {min(n, start + batch):,} of {n:,} orders into both stores")

    customer = customers[0]
    cache = ReadCache(64 * 1024 * 1024, {history_projection.name: [history.COLLECTION]})
    cached_db = ReadDatabase(db, cache)

    async def from_read_model(_: int) -> None:
        page = await history.order_history(db, customer, 20, None)
        assert len(page.documents) == 20, "no orders for the customer"

    async def from_cache(_: int) -> None:
        page = await history.order_history(cached_db, customer, 20, None)
        assert len(page.documents) == 20, "no orders for the customer"

    join = (
        sa.select(model.orders, model.order_lines)
        .join(model.order_lines, model.order_lines.c.order_id == model.orders.c.id)
        .where(model.orders.c.id.in_(
            sa.select(model.orders.c.id).where(model.orders.c.customer_id == sa.bindparam("c"))
            .order_by(model.orders.c.placed_at.desc()).limit(21).scalar_subquery()))
        .order_by(model.orders.c.placed_at.desc(), model.order_lines.c.line_no)
    )  # fmt: skip
    count = sa.select(sa.func.count()).where(model.orders.c.customer_id == sa.bindparam("c"))

    async def from_write_model(_: int) -> None:
        async with engine.connect() as conn:
            rows = (await conn.execute(join, {"c": customer})).all()
            await conn.scalar(count, {"c": customer})
        assert rows, "no orders for the customer"

    seconds = max(3.0, options.seconds)
    read = await at_least(from_read_model, calls=3, seconds=seconds)
    joined = await at_least(from_write_model, calls=3, seconds=seconds)
    hits_before, misses_before = cache.stats.hits, cache.stats.misses
    cached = await at_least(from_cache, calls=3, seconds=seconds)
    hits, misses = cache.stats.hits - hits_before, cache.stats.misses - misses_before
    await engine.dispose()
    await mongo.drop_database(db)
    return [
        Row(
            f"P5{label}", f"orderHistory at {n:,} orders: read model (no cache) ÷ SQL JOIN",
            read.rate, joined.rate, "query/s", ">= 5",
            detail={"read_ms": summary(read.latencies), "join_ms": summary(joined.latencies),
                    "orders": n, "orders_of_the_customer": numbers[customer]},
        ),
        Row(
            f"P5c{label}", "orderHistory: through the read cache ÷ SQL JOIN",
            cached.rate, joined.rate, "query/s", "",
            detail={"read_ms": summary(cached.latencies),
                    "hit_ratio": hits / max(1, hits + misses)},
        ),
    ]  # fmt: skip
