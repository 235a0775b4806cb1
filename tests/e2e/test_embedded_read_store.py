"""Without MONGODB_URL the server runs its own FerretDB, supervises it, and never leaves
it behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ROOT, Server, admin_token, bearer, wait_until

CREATE = (
    "mutation($sku: String!) { createProduct(input: "
    '{sku: $sku, name: "A", category: "c", priceCents: 1}) { version errors { code } } }'
)
READ = "query($sku: String!, $v: Version) { productBySku(sku: $sku, minVersion: $v) { sku } }"


def ferretdb_processes(data_dir: Path) -> list[int]:
    """PIDs of FerretDB processes whose files are in ``data_dir``."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args[0].endswith(b"ferretdb") and any(str(data_dir).encode() in a for a in args):
            pids.append(int(cmdline.parent.name))
    return pids


def is_zombie(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False  # reaped
    return "\nState:\tZ" in status


def graphql(server: Server, query: str, **variables: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{server.url}/graphql",
        json={"query": query, "variables": variables},
        headers=bearer(admin_token()),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def ready(server: Server) -> bool:
    try:
        return httpx.get(f"{server.url}/readyz", timeout=3).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def embedded(server_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    """A server with its own FerretDB; afterwards no FerretDB of it is left, stopped or not."""
    env = {k: v for k, v in server_env.items() if k != "MONGODB_URL"}
    env["SHOP_SHUTDOWN_GRACE"] = "4"
    data_dir = (tmp_path / "var" / "ferretdb").resolve()
    server = Server(env, tmp_path / "server.log").start()
    try:
        yield server, data_dir
    finally:
        server.stop()
        for pid in ferretdb_processes(data_dir):
            os.kill(pid, signal.SIGKILL)


def test_a_killed_read_store_is_reaped_restarted_and_caught_up(
    embedded: tuple[Server, Path],
) -> None:
    server, data_dir = embedded
    [first] = ferretdb_processes(data_dir)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: not is_zombie(first) and len(ferretdb_processes(data_dir)) == 1, 10)
    # Writes need only the write store: accepted whether the read store is back yet or not.
    versions = [graphql(server, CREATE, sku=f"K{n}")["data"]["createProduct"] for n in range(5)]
    assert all(v["errors"] == [] for v in versions), versions
    wait_until(lambda: ready(server), 15, lambda: server.log.read_text()[-3000:])
    read = graphql(server, READ, sku="k4", v=versions[-1]["version"])
    assert read == {"data": {"productBySku": {"sku": "K4"}}}
    assert "embedded FerretDB exited" in server.log.read_text()


def test_sigterm_ends_the_server_within_its_grace_whatever_the_read_store_does(
    embedded: tuple[Server, Path],
) -> None:
    server, data_dir = embedded
    [ferretdb] = ferretdb_processes(data_dir)
    os.kill(ferretdb, signal.SIGSTOP)  # it keeps every connection open and answers nothing
    assert server.process is not None
    # A read that waits on the stopped store is in flight while the server stops.
    body = b'{"query": "{ products(first: 1) { edges { cursor } } }"}'
    with socket.create_connection(("127.0.0.1", server.port)) as pending:
        pending.sendall(
            b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        server.process.send_signal(signal.SIGTERM)
        # The read never answers (its store is stopped): a server that waited for it past
        # its grace (SHOP_SHUTDOWN_GRACE, 4 s) would never exit.
        try:
            server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit\n{server.log.read_text()[-3000:]}") from None


def wait_gone(data_dir: Path) -> None:
    """FerretDB exits on its own signal, a moment after its parent."""
    wait_until(lambda: not ferretdb_processes(data_dir), within=10)


def test_embedded_ferretdb_lives_and_dies_with_the_server(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    env = {k: v for k, v in server_env.items() if k != "MONGODB_URL"}
    data_dir = (tmp_path / "var" / "ferretdb").resolve()
    server = Server(env, tmp_path / "server.log").start()
    try:
        assert len(ferretdb_processes(data_dir)) == 1
        create = (
            'mutation { createProduct(input: {sku: "A", name: "A", category: "c", priceCents: 1})'
        )
        created = httpx.post(
            f"{server.url}/graphql",
            json={"query": create + " { version } }"},
            headers=bearer(admin_token()),
        ).json()["data"]["createProduct"]
        read_query = f'{{ productBySku(sku: "a", minVersion: {created["version"]}) {{ sku }} }}'
        read = httpx.post(f"{server.url}/graphql", json={"query": read_query}).json()
        assert read["data"]["productBySku"] == {"sku": "A"}
    finally:
        server.stop()
    wait_gone(data_dir)


def test_a_failed_start_stops_the_ferretdb_it_started(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    env = {k: v for k, v in server_env.items() if k != "MONGODB_URL"}
    env["DATABASE_URL"] = "postgresql+asyncpg://nobody@127.0.0.1:1/none"  # nothing listens there
    env["LOG_LEVEL"] = "INFO"
    result = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", "0"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "ConnectionRefusedError" in result.stderr or "Connect call failed" in result.stderr
    assert "embedded FerretDB v1.24.2 listening" in result.stderr
    wait_gone((tmp_path / "var" / "ferretdb").resolve())


def test_without_go_the_server_says_how_to_get_a_read_store(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    env = {k: v for k, v in server_env.items() if k != "MONGODB_URL"}
    env |= {"PATH": "/usr/bin:/bin", "XDG_CACHE_HOME": str(tmp_path / "empty-cache")}
    result = subprocess.run(
        [sys.executable, "-m", "app", "serve"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Install Go" in result.stderr
    assert "MONGODB_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_embedded_default_publishes_no_progress_nobody_reads(
    embedded: tuple[Server, Path], tmp_path: Path
) -> None:
    """Only this process reads the embedded read store, so its relay reports progress in
    memory and writes no rows to the cross-process feed (projections.signals)."""
    import sqlite3

    server, _ = embedded
    created = graphql(server, CREATE, sku="FEED-1")["data"]["createProduct"]
    read = graphql(server, READ, sku="feed-1", v=created["version"])
    assert read == {"data": {"productBySku": {"sku": "FEED-1"}}}
    with sqlite3.connect(tmp_path / "var" / "write.db") as db:
        assert db.execute("SELECT count(*) FROM relay_progress").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM outbox").fetchone() == (1,)
