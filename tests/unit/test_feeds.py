"""Shared document feeds: one read per change, whatever the number of subscribers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from projections.feeds import DocumentMissing, Feeds
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
    """One passing fault of the read store used to end every subscription of the
    document for good."""
    progress, store = Progress(), Store()
    failures = [ConnectionError("read store unreachable")] * 2
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
