"""The embedded FerretDB's supervisor (app.ferretdb): restarts whatever happens, and
never mistakes another server on its port for its own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pymongo import MongoClient

from app.ferretdb import EmbeddedFerretDB, ensure_binary
from app.settings import Settings
from tests.conftest import eventually


def counting_binary(folder: Path, fail_on: int | None = None) -> tuple[Path, Path]:
    """A wrapper around the real FerretDB counting its launches; launch ``fail_on``
    fails at once (a full disk, say)."""
    real = ensure_binary(Settings().cache_dir)
    counter = folder / "launches"
    wrapper = folder / "ferretdb"
    fail = (
        f'if [ "$n" = {fail_on} ]; then echo "simulated failure" >&2; exit 1; fi' if fail_on else ""
    )
    wrapper.write_text(
        f"#!/bin/sh\nn=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}\n"
        f'{fail}\nexec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, counter


def launches(counter: Path) -> int:
    try:
        return int(counter.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


@contextlib.asynccontextmanager
async def supervised(ferretdb: EmbeddedFerretDB, backs: list[int]) -> AsyncIterator[None]:
    ferretdb.launch()
    await asyncio.to_thread(ferretdb.wait_until_ready)
    task = asyncio.create_task(ferretdb.supervise(on_restart=lambda: backs.append(1)))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        ferretdb.stop()


async def test_a_failed_restart_is_retried(tmp_path: Path) -> None:
    binary, counter = counting_binary(tmp_path, fail_on=2)
    ferretdb = EmbeddedFerretDB(binary, tmp_path / "data")
    backs: list[int] = []
    async with supervised(ferretdb, backs):
        assert ferretdb.process is not None
        os.kill(ferretdb.process.pid, signal.SIGKILL)
        await eventually(lambda: _true(ferretdb.restarts == 1), within=20)
        assert launches(counter) == 3  # the first, the one that failed, the good one
        assert backs == [1]
        with MongoClient(ferretdb.url) as client:
            assert client.admin.command("ping")["ok"]


async def test_another_server_on_its_port_is_not_taken_for_it(tmp_path: Path) -> None:
    binary, counter = counting_binary(tmp_path)
    ours = EmbeddedFerretDB(binary, tmp_path / "ours")
    backs: list[int] = []
    async with supervised(ours, backs):
        with MongoClient(ours.url) as client:
            client.shop.marker.insert_one({"_id": "ours"})
        assert ours.process is not None
        other = EmbeddedFerretDB(ensure_binary(Settings().cache_dir), tmp_path / "other")
        other.port = ours.port
        os.kill(ours.process.pid, signal.SIGKILL)
        other.launch()  # another server takes the port while ours is down
        try:
            await asyncio.to_thread(other.wait_until_ready)
            # Ours tries again and again (it cannot bind) and never says it is back.
            await eventually(lambda: _true(launches(counter) >= 3), within=20)
            assert backs == []
        finally:
            other.stop()
        await eventually(lambda: _true(ours.restarts == 1), within=20)
        with MongoClient(ours.url) as client:
            assert client.shop.marker.find_one() == {"_id": "ours"}


async def _true(value: bool) -> bool:
    return value


pytestmark = pytest.mark.skipif(
    bool(os.environ.get("MONGODB_URL")), reason="the embedded FerretDB only"
)
