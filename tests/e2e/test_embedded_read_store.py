"""Without MONGODB_URL the server runs its own FerretDB, and never leaves it behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from tests.e2e.conftest import ROOT, Server, admin_token, bearer, wait_until


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
