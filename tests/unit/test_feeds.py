"""Shared document feeds: one read per change, whatever the number of subscribers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo.errors import AutoReconnect

import projections.feeds as feeds_module
from projections.feeds import DocumentMissing, Feeds, StoreUnavailable
from projections.progress import Progress


class Store:
    """A document whose reads are counted."""

    def __init__(self) -> None:
        self.document: dict[str, Any] | None = {"_id": "p1", "version": 1}
        self.reads = 0

    async def load(self) -> dict[str, Any] | None:
        self.reads += 1
        return None if self.document is None else dict(self.document)


async def take(stream: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    return await asyncio.wait_for(anext(stream), 5)


async def test_many_followers_share_one_read_per_change() -> None:
    progress, store = Progress(), Store()
    feeds = Feeds(progress)
    streams = [feeds.documents("products", "p1", store.load) for _ in range(50)]
    assert [(await take(s))["version"] for s in streams] == [1] * 50
    assert store.reads == 1

    store.document = {"_id": "p1", "version": 5}
    progress.advance("products", 5, {"p1"})
    assert [(await take(s))["version"] for s in streams] == [5] * 50
    assert store.reads == 2
    assert len(feeds) == 1
    for stream in streams:
        await stream.aclose()  # type: ignore[attr-defined]
    assert len(feeds) == 0


async def test_a_late_follower_gets_a_read_at_least_as_new_as_the_progress_it_saw() -> None:
    """Progress moved on without touching this key: the late joiner's first document is
    still read after that point, so a minVersion it waited for holds."""
    progress, store = Progress(), Store()
    feeds = Feeds(progress)
    first = feeds.documents("products", "p1", store.load)
    await take(first)
    progress.advance("products", 9, {"other"})
    late = feeds.documents("products", "p1", store.load)
    assert (await take(late))["version"] == 1
    assert store.reads == 2
    for stream in (first, late):
        await stream.aclose()  # type: ignore[attr-defined]


async def test_a_missing_document_ends_every_follower_and_the_next_one_retries() -> None:
    progress, store = Progress(), Store()
    store.document = None
    feeds = Feeds(progress)
    with pytest.raises(DocumentMissing):
        await take(feeds.documents("products", "p1", store.load))
    store.document = {"_id": "p1", "version": 2}
    stream = feeds.documents("products", "p1", store.load)
    assert (await take(stream))["version"] == 2
    await stream.aclose()  # type: ignore[attr-defined]


async def test_a_failed_read_is_tried_again_and_ends_no_follower() -> None:
    """One passing fault of the read store does not end every subscription of the
    document for good."""
    progress, store = Progress(), Store()
    failures = [AutoReconnect("read store unreachable")] * 2
    real_load = store.load

    async def flaky() -> dict[str, Any] | None:
        if failures:
            raise failures.pop()
        return await real_load()

    feeds = Feeds(progress)
    stream = feeds.documents("products", "p1", flaky)
    assert (await take(stream))["version"] == 1
    assert failures == []
    store.document = {"_id": "p1", "version": 3}
    progress.advance("products", 3, {"p1"})
    assert (await take(stream))["version"] == 3
    await stream.aclose()  # type: ignore[attr-defined]


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feeds_module, "RETRY_FIRST", 0.001)
    monkeypatch.setattr(feeds_module, "RETRY_MOST", 0.002)


@pytest.mark.usefixtures("quick_retries")
async def test_a_streak_of_store_faults_is_logged_once_and_its_end_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    progress, store = Progress(), Store()
    failures = [AutoReconnect("read store unreachable\n" + "detail " * 500)] * 40

    async def flaky() -> dict[str, Any] | None:
        if failures:
            raise failures.pop()
        return await store.load()

    with caplog.at_level(logging.INFO, logger="projections.feeds"):
        stream = Feeds(progress).documents("products", "p1", flaky)
        assert (await take(stream))["version"] == 1
        await stream.aclose()  # type: ignore[attr-defined]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "failed (AutoReconnect: read store unreachable detail" in lines[0]
    assert "works again after 40 failures" in lines[1]
    assert all("\n" not in line and len(line) < 400 for line in lines)
    assert not any(r.exc_info for r in caplog.records)


async def test_a_read_that_can_never_succeed_ends_its_followers_at_once() -> None:
    """Not a fault of the store (here: text no store can encode): trying again would
    fail again, and did, forever, logging each time."""
    progress, reads = Progress(), 0

    async def broken() -> dict[str, Any] | None:
        nonlocal reads
        reads += 1
        "\ud800".encode()
        return None

    feeds = Feeds(progress)
    followers = [feeds.documents("products", "p1", broken) for _ in range(3)]
    ended = await asyncio.gather(*(take(f) for f in followers), return_exceptions=True)
    assert [type(e) for e in ended] == [UnicodeEncodeError] * 3
    assert reads == 1
    assert len(feeds) == 0


@pytest.mark.usefixtures("quick_retries")
async def test_a_store_down_for_longer_than_the_retry_time_ends_the_feed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(feeds_module, "RETRY_FOR", 0.05)
    reads = 0

    async def down() -> dict[str, Any] | None:
        nonlocal reads
        reads += 1
        raise AutoReconnect("read store unreachable")

    with caplog.at_level(logging.INFO, logger="projections.feeds"), pytest.raises(StoreUnavailable):
        await take(Feeds(Progress()).documents("products", "p1", down))
    assert reads > 2
    assert len(caplog.records) == 2  # the streak's start, and giving up
