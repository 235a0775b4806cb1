"""Real servers for end-to-end tests: `cqrs-shop serve` processes, over HTTP and WS."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from app.auth import mint
from app.ferretdb import free_port
from domain.identity import ADMIN_ROLE, CUSTOMER_ROLE
from tests.e2e import forkserver
from tests.e2e.forkserver import ForkedProcess

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0
# The servers under test verify tokens signed with this secret (SHOP_AUTH_SECRET).
SECRET = "e2e-test-secret-0123456789abcdef0123"


def admin_token(ttl: float = 3600) -> str:
    return mint(SECRET, "admin", [ADMIN_ROLE], ttl)


def customer_token(customer_id: str, ttl: float = 3600) -> str:
    return mint(SECRET, customer_id, [CUSTOMER_ROLE], ttl)


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def rss(pid: int) -> int:
    """A process's resident memory in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def wait_until(
    condition: Callable[[], bool], within: float, explain: Callable[[], str] = lambda: ""
) -> None:
    """Polls ``condition`` until it holds; fails after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s\n{explain()}")
        time.sleep(0.05)


class Server:
    """One ``cqrs-shop serve`` process; ``start`` waits until /readyz answers 200."""

    def __init__(self, env: dict[str, str], log: Path, role: str = "all") -> None:
        self.env = env
        self.log = log
        self.role = role
        self.process: ForkedProcess | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    def start(self, wait_ready: bool = True) -> Server:
        self.port = free_port()
        argv = ["serve", "--port", str(self.port), "--role", self.role]
        self.process = forkserver.shared().spawn(argv, self.env, ROOT, self.log)
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        last = ""

        def ready() -> bool:
            nonlocal last
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"server exited:\n{self.log.read_text()[-3000:]}")
            try:
                response = httpx.get(f"{self.url}/readyz", timeout=1)
            except httpx.TransportError as error:
                last = repr(error)
                return False
            last = response.text
            return response.status_code == 200

        wait_until(
            ready,
            START_TIMEOUT,
            lambda: f"{self.role} /readyz: {last}\n{self.log.read_text()[-3000:]}",
        )

    def kill(self) -> None:
        """kill -9, and reaped; ``start`` runs it again on the same stores."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait()

    def stop(self, signalled: bool = False) -> int:
        """SIGTERM (unless ``signalled`` already) and its exit code; kill -9 after 20 s."""
        process, self.process = self.process, None
        if process is None:
            return 0
        if not signalled:
            process.terminate()
        try:
            return process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()


@contextmanager
def module_server(
    tmp_path_factory: pytest.TempPathFactory, mongo_url: str, name: str, **env: str
) -> Iterator[Server]:
    """A server configured like ``server_env``'s, with ``env`` over it, running for the
    block: for a module-scoped fixture."""
    directory: Path = tmp_path_factory.mktemp(name)
    server = Server(environment(mongo_url, directory, **env), directory / "server.log").start()
    try:
        yield server
    finally:
        server.stop()


def environment(mongo_url: str, directory: Path, **env: str) -> dict[str, str]:
    """A test server's environment: its own read database and data directory (under
    ``directory``), quiet logs, the tests' token secret; ``env`` over that."""
    return {
        **os.environ,
        "MONGODB_URL": mongo_url,
        "MONGODB_DATABASE": f"e2e_{uuid.uuid4().hex[:12]}",
        "SHOP_DATA_DIR": str(directory / "var"),
        "LOG_LEVEL": "WARNING",
        "SHOP_AUTH_SECRET": SECRET,
        **env,
    }


@pytest.fixture
def server_env(mongo_url: str, tmp_path: Path) -> dict[str, str]:
    return environment(mongo_url, tmp_path)


@pytest.fixture
def start_server(server_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    servers: list[Server] = []

    def start(role: str = "all", **env: str) -> Server:
        server = Server({**server_env, **env}, tmp_path / f"server{len(servers)}.log", role)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


class Cluster:
    """The production topology: PostgreSQL write store, FerretDB on PostgreSQL, two
    ``relay`` and two ``api`` processes."""

    def __init__(self, apis: list[Server], relays: list[Server], database_url: str) -> None:
        self.apis = apis
        self.relays = relays
        self.database_url = database_url

    @property
    def servers(self) -> list[Server]:
        return [*self.relays, *self.apis]

    def stop(self) -> None:
        """Asks every process to stop at once, then waits for each."""
        running = [server for server in self.servers if server.process is not None]
        for server in running:
            assert server.process is not None
            server.process.terminate()
        for server in running:
            server.stop(signalled=True)


@contextmanager
def running_cluster(
    postgres_server: str, read_store: str, env: dict[str, str], directory: Path
) -> Iterator[Cluster]:
    """A :class:`Cluster` on a fresh copy of the migrated write store, for the block."""
    from tests.conftest import TEMPLATE, fresh_database_apart

    with fresh_database_apart(postgres_server, TEMPLATE) as database_url:
        env = {**env, "DATABASE_URL": database_url, "MONGODB_URL": read_store}
        cluster = Cluster(
            apis=[Server(env, directory / f"api{n}.log", "api") for n in range(2)],
            relays=[Server(env, directory / f"relay{n}.log", "relay") for n in range(2)],
            database_url=database_url,
        )
        try:
            for server in cluster.servers:
                server.start(wait_ready=False)
            for server in cluster.servers:
                server.wait_ready()
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture
def cluster(
    migrated_postgres: str, ferretdb_on_postgres: str, server_env: dict[str, str], tmp_path: Path
) -> Iterator[Cluster]:
    """A cluster of the test's own, for tests that kill, pause or count from position 1."""
    with running_cluster(migrated_postgres, ferretdb_on_postgres, server_env, tmp_path) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def module_cluster(
    migrated_postgres: str,
    ferretdb_on_postgres: str,
    mongo_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    """A cluster shared by a module's tests; each test makes data of its own."""
    directory = tmp_path_factory.mktemp("cluster")
    env = environment(mongo_url, directory)
    with running_cluster(migrated_postgres, ferretdb_on_postgres, env, directory) as cluster:
        yield cluster


@pytest.fixture(scope="module", params=["embedded", "production"])
def topology(request: pytest.FixtureRequest) -> str:
    """Contract tests run on the embedded default stores (SQLite, FerretDB on SQLite, one
    process) and on the production topology (see :class:`Cluster`)."""
    return str(request.param)


@pytest.fixture(scope="module")
def server(
    topology: str,
    request: pytest.FixtureRequest,
    mongo_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    """The server a module's tests talk to: the only one, or the cluster's first api
    process. Shared by the module's tests, so each test makes its own data (see
    :func:`unique`) and counts from where it started, never from position 1."""
    if topology == "production":
        cluster: Cluster = request.getfixturevalue("module_cluster")
        yield cluster.apis[0]
        return
    with module_server(tmp_path_factory, mongo_url, "embedded") as server:
        yield server


def unique(prefix: str) -> str:
    """``prefix`` made unique, for data of one test on a shared server: SKUs, emails,
    categories, idempotency keys."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Client:
    """Sends GraphQL as an admin unless given another token (or None: anonymous)."""

    def __init__(self, http: httpx.AsyncClient, token: str | None = "admin") -> None:
        self.http = http
        self.token = admin_token() if token == "admin" else token

    def as_(self, token: str | None) -> Client:
        return Client(self.http, token)

    async def post(
        self, query: str, variables: dict[str, Any] | None = None, **headers: str
    ) -> dict[str, Any]:
        response = await self.http.post(
            "/graphql",
            json={"query": query, "variables": variables or {}},
            headers={**bearer(self.token), **headers},
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def data(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = await self.post(query, variables)
        assert "errors" not in body, body
        data: dict[str, Any] = body["data"]
        return data


@pytest.fixture
async def client(server: Server) -> AsyncIterator[Client]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        yield Client(http)


@asynccontextmanager
async def subscription(
    server: Server,
    query: str,
    variables: dict[str, Any],
    protocol: str = "graphql-transport-ws",
    token: str | None = "admin",
) -> AsyncIterator[Any]:
    """Opens one subscription (as an admin unless given another token, or None);
    yields an async function that returns the next payload."""
    params = bearer(admin_token() if token == "admin" else token)
    async with connect(server.ws_url, subprotocols=[protocol], open_timeout=10) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": params}))
        assert (await _receive(ws))["type"] == "connection_ack"
        start = "subscribe" if protocol == "graphql-transport-ws" else "start"
        payload = {"query": query, "variables": variables}
        await ws.send(json.dumps({"id": "1", "type": start, "payload": payload}))

        async def next_payload() -> dict[str, Any]:
            message = await _receive(ws)
            assert message["type"] in ("next", "data"), message
            result: dict[str, Any] = message["payload"]
            return result

        yield next_payload


async def _receive(ws: ClientConnection, within: float = 15.0) -> dict[str, Any]:
    import asyncio

    while True:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), within))
        if message["type"] != "ka":  # graphql-ws keep-alives
            return message
