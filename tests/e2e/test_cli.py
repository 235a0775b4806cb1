"""The seed and rebuild commands, run as a user would, beside a running server."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient

from projections import checkpoints
from projections.rebuild import REBUILD_TTL
from projections.registry import projection_names
from tests.conftest import eventually
from tests.e2e import forkserver
from tests.e2e.conftest import ROOT, Client, wait_until

READ_EVERYTHING = """query($v: Version) {
  dashboard(minVersion: $v) { productCount customerCount orderCount shippedOrderCount
                              cancelledOrderCount revenueCents lowStockCount version }
  topProducts(limit: 5, minVersion: $v) { productId unitsSold revenueCents orderCount }
  products(first: 100, minVersion: $v) { totalCount edges { node { id stockAvailable version } } }
  shippingQueue(first: 100, minVersion: $v) { totalCount edges { node { id customer { name } } } }
}"""


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return forkserver.run(list(args), env)


async def test_seed_then_rebuild_while_serving_changes_no_answer(
    server_env: dict[str, str], start_server: Any
) -> None:
    seeded = cli(server_env, "seed", "--products", "20", "--customers", "10", "--orders", "60")
    assert seeded.returncode == 0, seeded.stderr
    assert "created 20 products, 10 customers," in seeded.stdout
    seeded_version = int(seeded.stdout.rsplit("minVersion ", 1)[1])

    # Catching up on a freshly seeded store takes FerretDB a few seconds (see README).
    server = start_server(SHOP_CONSISTENCY_TIMEOUT="60")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        client = Client(http)
        before = await client.data(READ_EVERYTHING, {"v": seeded_version})
        assert before["dashboard"]["productCount"] == 20
        assert before["dashboard"]["customerCount"] == 10

        # A grace of 3 s (10 by default): the server learns of the switch within 1 s.
        rebuilt = cli(server_env, "rebuild", "--grace", "3")
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert f"up to version {seeded_version}" in rebuilt.stdout

        after = await client.data(READ_EVERYTHING, {"v": seeded_version})
        assert after == before
        created = await client.data(
            'mutation { createProduct(input: {sku: "NEW", name: "New", category: "c", '
            "priceCents: 5}) { version } }"
        )
        version = created["createProduct"]["version"]
        assert version == seeded_version + 1
        fresh = await client.data(
            'query($v: Version) { productBySku(sku: "new", minVersion: $v) { version } }',
            {"v": version},
        )
        assert fresh["productBySku"]["version"] == version  # the relay carries on after the swap


# When a lease expires, as the rebuild command says it.
MOMENT = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, \d+\.\d s from now"


def test_a_rebuild_refuses_beside_a_running_one_and_waits_out_a_killed_ones_lease(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    """A rebuild killed by the OOM killer (kill -9) leaves its lease to expire: the next
    one says whose it is and when it expires, waits for it and runs. The lease's expiry
    is moved instead of waited for: to a few seconds away (renewed over half its ttl
    ago, so its rebuild stopped answering), then past."""
    seeded = cli(server_env, "seed", "--products", "5", "--customers", "3", "--orders", "10")
    assert seeded.returncode == 0, seeded.stderr
    log = tmp_path / "first-rebuild.log"
    first = forkserver.shared().spawn(["rebuild", "--grace", "600"], server_env, ROOT, log)
    try:
        holder = wait_until_rebuild_lease_held(server_env, first, log)
        refused = cli(server_env, "rebuild")
        assert refused.returncode == 1, (refused.stdout, refused.stderr)
        said = " ".join(refused.stderr.split())
        assert f"not rebuilt: another rebuild is running (holder {holder} " in said, said
        assert re.search(f"expires at {MOMENT}, unless renewed", said), said
    finally:
        first.kill()
        first.wait()

    out, err = tmp_path / "second-rebuild.out", tmp_path / "second-rebuild.err"
    second = forkserver.shared().spawn(["rebuild", "--grace", "0"], server_env, ROOT, out, err)

    def printed() -> str:
        return " ".join(text(out).split())

    try:
        checking = "checking whether its rebuild still runs"
        waiting = f"a rebuild that stopped answering holds the lease (holder {holder},"
        wait_until(lambda: checking in printed() or waiting in printed(), 60, lambda: text(err))
        # Unrenewed for over half its ttl by the store's clock, with a few seconds left.
        lease_expires_in(server_env, REBUILD_TTL / 2 - 0.5)
        wait_until(lambda: waiting in printed() or second.poll() is not None, 60, printed)
        for _ in range(5):  # it waits: the dead holder keeps the lease while it lasts
            assert (second.poll(), rebuild_lease_owner(server_env)) == (None, holder)
            time.sleep(0.1)
        lease_expires_in(server_env, -1)
        assert second.wait(timeout=60) == 0, (out.read_text(), err.read_text())
    finally:
        second.kill()
        second.wait()
    assert re.search(f"expires at {MOMENT}; waiting for it to expire", printed()), printed()
    assert "rebuilt products, customers," in printed()


def text(path: Path) -> str:
    """What a process wrote to ``path`` so far."""
    return path.read_text() if path.exists() else ""


def write_store(env: dict[str, str]) -> contextlib.closing[sqlite3.Connection]:
    """A connection to the SQLite write store of the servers and commands run with ``env``."""
    return contextlib.closing(sqlite3.connect(Path(env["SHOP_DATA_DIR"]) / "write.db"))


def rebuild_lease_owner(env: dict[str, str]) -> str | None:
    with write_store(env) as conn:
        row = conn.execute("SELECT owner FROM relay_leases WHERE name = 'rebuild'").fetchone()
    return row[0] if row else None


def lease_expires_in(env: dict[str, str], seconds: float) -> None:
    """Moves the rebuild lease's expiry to ``seconds`` from now by the write store's
    clock (as if that much of its ttl were left)."""
    now = "(julianday('now') - 2440587.5) * 86400.0"  # the lease's clock (lease._now)
    with write_store(env) as conn:
        conn.execute(
            f"UPDATE relay_leases SET expires_at = {now} + ? WHERE name = 'rebuild'", (seconds,)
        )
        conn.commit()


def wait_until_rebuild_lease_held(
    env: dict[str, str], process: forkserver.ForkedProcess, log: Path
) -> str:
    """The holder of the rebuild lease, once ``process`` (a rebuild) has taken it."""
    holder = ""

    def held() -> bool:
        nonlocal holder
        assert process.poll() is None, log.read_text()
        holder = rebuild_lease_owner(env) or ""
        return bool(holder)

    wait_until(held, within=60, explain=log.read_text)
    return holder


def test_rebuild_refuses_unknown_projections(server_env: dict[str, str]) -> None:
    result = cli(server_env, "rebuild", "products", "nonsense")
    assert result.returncode == 2
    assert "unknown projection(s): nonsense" in result.stderr
    assert "audit_trail" in result.stderr


async def test_status_shows_positions_lag_head_and_the_lease_holder(
    server_env: dict[str, str], start_server: Any
) -> None:
    server = start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        created = await Client(http).data(
            'mutation { createProduct(input: {sku: "S1", name: "S", category: "c", '
            "priceCents: 5}) { version } }"
        )
        version = created["createProduct"]["version"]
        await Client(http).data(
            "query($v: Version) { dashboard(minVersion: $v) { version } }", {"v": version}
        )
    shown = cli(server_env, "status")
    assert shown.returncode == 0, shown.stderr
    assert f"outbox head: {version}" in shown.stdout
    for name in ("products", "order_history_pages", "audit_trail"):
        assert name in shown.stdout
    assert "RUNNING" in shown.stdout
    assert "nobody holds it" not in shown.stdout
    server.stop()
    stopped = cli(server_env, "status")
    assert "STOPPED" in stopped.stdout or "nobody holds it" in stopped.stdout


async def test_verify_passes_on_a_consistent_shop_and_names_each_corrupted_document(
    server_env: dict[str, str], start_server: Any, mongo: AsyncMongoClient[dict[str, Any]]
) -> None:
    seeded = cli(server_env, "seed", "--products", "8", "--customers", "5", "--orders", "30")
    assert seeded.returncode == 0, seeded.stderr
    version = int(seeded.stdout.rsplit("minVersion ", 1)[1])
    start_server(SHOP_CONSISTENCY_TIMEOUT="60")
    db = mongo[server_env["MONGODB_DATABASE"]]

    async def caught_up() -> bool:
        positions = [c.position for c in (await checkpoints.load_all(db)).values()]
        return len(positions) == len(projection_names()) and min(positions) >= version

    await eventually(caught_up, within=60)
    clean = cli(server_env, "verify")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "no differences" in clean.stdout
    assert f"compared the write model at outbox position {version}" in clean.stdout

    product = await db["products"].find_one({})
    order = await db["orders"].find_one({})
    assert product is not None
    assert order is not None
    await db["products"].update_one({"_id": product["_id"]}, {"$inc": {"stockOnHand": 1}})
    await db["orders"].delete_one({"_id": order["_id"]})
    await db["customers"].insert_one({"_id": "stray", "name": "Nobody", "version": 1})
    found = cli(server_env, "verify")
    assert found.returncode == 1, found.stdout + found.stderr
    on_hand = product["stockOnHand"]
    for line in (
        f"products/{product['_id']}: stockOnHand {on_hand + 1} != {on_hand}",
        f"orders/{order['_id']}: missing in the store",
        "customers/stray: extra in the store",
        "3 differences",
    ):
        assert line in found.stdout.splitlines(), found.stdout

    only = cli(server_env, "verify", "customers", "products")
    assert only.returncode == 1
    assert "customers/stray: extra in the store" in only.stdout
    assert "orders/" not in only.stdout
    assert "2 differences" in only.stdout


def test_verify_refuses_unknown_projections(server_env: dict[str, str]) -> None:
    result = cli(server_env, "verify", "products", "nonsense")
    assert result.returncode == 2
    assert "unknown projection(s): nonsense" in result.stderr


def test_verify_that_cannot_reach_a_store_says_so_with_exit_3(
    server_env: dict[str, str],
) -> None:
    """Not exit 1: that would claim differences it never looked for."""
    unreachable = {**server_env, "MONGODB_URL": "mongodb://127.0.0.1:1/",
                   "SHOP_READ_STORE_TIMEOUT": "1"}  # fmt: skip
    result = cli(unreachable, "verify")
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "could not verify" in result.stderr


def test_status_and_verify_read_and_never_migrate(server_env: dict[str, str]) -> None:
    """An operator who migrates as a release step (SHOP_MIGRATE_ON_START=false) can run
    the read-only commands of a new release without them changing the schema."""
    env = {**server_env, "SHOP_MIGRATE_ON_START": "false"}
    Path(env["SHOP_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    status = cli(env, "status")
    assert status.returncode == 1, (status.stdout, status.stderr)
    assert "cqrs-shop migrate" in status.stderr
    verify = cli(env, "verify")
    assert verify.returncode == 3, (verify.stdout, verify.stderr)
    with write_store(env) as conn:
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    assert tables == [], tables
