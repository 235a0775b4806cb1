"""Relay processes stopping gracefully: the lease is handed over at once, not left to
expire, and ``/readyz`` tells whether any relay applies events.

The relays' lease lasts 60 s here (a holder renews it once half is gone), so anything
that happens within a few seconds of a SIGTERM did not wait for it to expire.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import Client, Server, wait_until
from tests.e2e.test_faults import leader, running

LEASE_TTL = 60.0
PROMPTLY = 10.0  # well below the 30 s at least that an expiry would take
RELAY = {"SHOP_RELAY_LEASE_TTL": str(LEASE_TTL)}
CREATE = """mutation($sku: String!) {
  createProduct(input: {sku: $sku, name: "Mug", category: "c", priceCents: 100}) {
    success id version } }"""
PRODUCT = "query($id: ID!, $v: Version) { product(id: $id, minVersion: $v) { id version } }"


def readiness(server: Server) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"{server.url}/readyz", timeout=5)
    return response.status_code, response.json()


async def read_own_write(api: Server, sku: str) -> None:
    """A write through ``api`` is readable at its version there: some relay applies."""
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        client = Client(http)
        created = (await client.data(CREATE, {"sku": sku}))["createProduct"]
        assert created["success"], created
        product = await client.data(PRODUCT, {"id": created["id"], "v": created["version"]})
    assert product["product"] == {"id": created["id"], "version": created["version"]}


async def test_a_relay_stopped_by_sigterm_hands_its_lease_to_the_standby_at_once(
    start_server: Any,
) -> None:
    relays: list[Server] = [start_server("relay", **RELAY), start_server("relay", **RELAY)]
    api: Server = start_server("api", SHOP_CONSISTENCY_TIMEOUT="5")
    await read_own_write(api, "BEFORE")
    old = leader(relays)
    [standby] = [relay for relay in relays if relay is not old]
    stopped_at = time.monotonic()
    old.stop()  # SIGTERM, and waits for the exit
    wait_until(lambda: running(standby), PROMPTLY, lambda: standby.log.read_text()[-3000:])
    took = time.monotonic() - stopped_at
    assert took < PROMPTLY, took
    assert "Traceback" not in old.log.read_text(), old.log.read_text()[-3000:]
    # The standby applies events now: a new write is read at its version.
    await read_own_write(api, "AFTER")


async def test_readyz_answers_503_while_no_relay_applies_events(
    server_env: dict[str, str], tmp_path: Path, start_server: Any
) -> None:
    api = Server({**server_env, "SHOP_CONSISTENCY_TIMEOUT": "5"}, tmp_path / "api.log", "api")
    api.start(wait_ready=False)
    try:
        # Up and serving, with both stores reachable, but no relay anywhere yet.
        wait_until(lambda: _answers(api), 30, lambda: api.log.read_text()[-3000:])
        status, body = readiness(api)
        assert (status, body) == (
            503,
            {"status": "unavailable",
             "checks": {"writeStore": True, "readStore": True, "relay": False}},
        ), body  # fmt: skip

        relay: Server = start_server("relay", **RELAY)
        wait_until(lambda: readiness(api)[0] == 200, PROMPTLY)
        await read_own_write(api, "READY")

        # A relay stopped gracefully gives its lease up: not ready again long before the
        # lease would have expired.
        relay.stop()
        wait_until(lambda: readiness(api)[0] == 503, PROMPTLY, lambda: str(readiness(api)))
        assert readiness(api)[1]["checks"]["relay"] is False
    finally:
        api.stop()


def _answers(server: Server) -> bool:
    try:
        return httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
