"""The read cache's rules, each on a race played out step by step."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from projections import cache as cache_module
from projections.cache import ReadCache
from projections.paging import Page
from projections.progress import Progress

COLLECTIONS = {"products": ["products"], "dashboard": ["dashboard", "dashboard_stock"]}


class Store:
    """A read store whose reads can be held half-way."""

    def __init__(self) -> None:
        self.documents: dict[Any, dict[str, Any]] = {}
        self.reads = 0
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    def loader(self, key: Any) -> Any:
        async def load() -> dict[str, Any] | None:
            self.reads += 1
            found = self.documents.get(key)
            self.started.set()
            if self.gate is not None:
                await self.gate.wait()
            return found

        return load


async def test_a_hit_needs_no_read_and_a_change_drops_the_entry() -> None:
    cache, store = ReadCache(1 << 20, COLLECTIONS), Store()
    store.documents["p1"] = {"_id": "p1", "version": 1}
    assert await cache.document("products", "p1", store.loader("p1")) == {"_id": "p1", "version": 1}
    assert await cache.document("products", "p1", store.loader("p1")) == {"_id": "p1", "version": 1}
    assert store.reads == 1
    store.documents["p1"] = {"_id": "p1", "version": 2}
    cache.changed("products", ["p1"])
    assert (await cache.document("products", "p1", store.loader("p1")))["version"] == 2
    assert store.reads == 2
    assert (cache.stats.hits, cache.stats.misses) == (1, 2)


async def test_a_read_that_started_before_a_change_is_not_kept() -> None:
    cache, store = ReadCache(1 << 20, COLLECTIONS), Store()
    store.documents["p1"] = {"_id": "p1", "version": 1}
    store.gate = asyncio.Event()
    slow = asyncio.create_task(cache.document("products", "p1", store.loader("p1")))
    await store.started.wait()  # it has read version 1 and not yet returned
    store.documents["p1"] = {"_id": "p1", "version": 2}
    cache.changed("products", ["p1"])
    store.gate.set()
    assert (await slow)["version"] == 1  # it began before the change: that is its answer
    store.gate = None
    assert (await cache.document("products", "p1", store.loader("p1")))["version"] == 2
    assert cache.stats.refused_fills == 1


async def test_a_read_that_started_before_its_collection_was_emptied_is_not_kept() -> None:
    cache, store = ReadCache(1 << 20, COLLECTIONS), Store()
    store.documents["p1"] = {"_id": "p1", "version": 1}
    store.gate = asyncio.Event()
    slow = asyncio.create_task(cache.document("products", "p1", store.loader("p1")))
    await store.started.wait()
    cache.changed("products", None)  # "any may have changed"
    store.gate.set()
    await slow
    assert len(cache) == 0


async def test_a_read_after_a_change_never_joins_a_read_from_before_it() -> None:
    cache, store = ReadCache(1 << 20, COLLECTIONS), Store()
    store.documents["p1"] = {"_id": "p1", "version": 1}
    store.gate = asyncio.Event()
    first = asyncio.create_task(cache.document("products", "p1", store.loader("p1")))
    await store.started.wait()
    joined = asyncio.create_task(cache.document("products", "p1", store.loader("p1")))
    await asyncio.sleep(0)
    assert store.reads == 1  # a concurrent miss shares the read in flight
    store.documents["p1"] = {"_id": "p1", "version": 2}
    cache.changed("products", ["p1"])
    later = asyncio.create_task(cache.document("products", "p1", store.loader("p1")))
    await asyncio.sleep(0)
    assert store.reads == 2  # ...but not one that started before the change
    store.gate.set()
    assert [(await t)["version"] for t in (first, joined, later)] == [1, 1, 2]


async def test_a_shared_read_cancelled_by_its_caller_is_read_again_by_the_others() -> None:
    cache, store = ReadCache(1 << 20, COLLECTIONS), Store()
    store.documents["p1"] = {"_id": "p1", "version": 1}
    store.gate = asyncio.Event()
    first = asyncio.create_task(cache.document("products", "p1", store.loader("p1")))
    await store.started.wait()
    second = asyncio.create_task(cache.document("products", "p1", store.loader("p1")))
    await asyncio.sleep(0)
    first.cancel()
    store.gate.set()
    assert (await second)["version"] == 1
    assert first.cancelled()


async def test_a_failed_read_fails_its_sharers_and_is_not_kept() -> None:
    cache = ReadCache(1 << 20, COLLECTIONS)
    gate = asyncio.Event()

    async def failing() -> None:
        await gate.wait()
        raise OSError("read store down")

    first = asyncio.create_task(cache.document("products", "p1", failing))
    await asyncio.sleep(0)
    second = asyncio.create_task(cache.document("products", "p1", failing))
    await asyncio.sleep(0)
    gate.set()
    for task in (first, second):
        with pytest.raises(OSError, match="read store down"):
            await task
    assert len(cache) == 0


async def test_queries_are_dropped_by_any_change_of_their_projection() -> None:
    cache, store = ReadCache(1 << 20, COLLECTIONS), Store()
    store.documents["derived"] = {"orders": 1}
    await cache.query("dashboard", "derived", store.loader("derived"))
    await cache.document("products", "p1", store.loader("p1"))
    cache.changed("dashboard", ["some-stock-row"])  # a document of another of its collections
    await cache.query("dashboard", "derived", store.loader("derived"))
    await cache.document("products", "p1", store.loader("p1"))
    assert store.reads == 3  # the query again; the product still held


async def test_an_unknown_projection_empties_everything() -> None:
    cache, store = ReadCache(1 << 20, COLLECTIONS), Store()
    await cache.document("products", "p1", store.loader("p1"))
    cache.changed("something_new", ["x"])
    assert len(cache) == 0


async def test_memory_is_bounded_least_recently_used_first() -> None:
    one = cache_module.entry_size(("products", "p0"), {"_id": "p0", "pad": "x" * 1000})
    cache, store = ReadCache(one * 4, COLLECTIONS), Store()
    for i in range(5):
        store.documents[f"p{i}"] = {"_id": f"p{i}", "pad": "x" * 1000}
    for key in ("p0", "p1", "p2", "p3", "p0", "p4"):  # p0 used again: p1 is the oldest
        await cache.document("products", key, store.loader(key))
    assert cache.bytes <= one * 4
    assert cache.stats.evictions == 1
    reads = store.reads
    await cache.document("products", "p0", store.loader("p0"))
    assert store.reads == reads
    await cache.document("products", "p1", store.loader("p1"))
    assert store.reads == reads + 1


async def test_too_few_tombstones_refuse_every_older_fill(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "MAX_TOMBSTONES", 2)
    cache, store = ReadCache(1 << 20, COLLECTIONS), Store()
    store.gate = asyncio.Event()
    slow = asyncio.create_task(cache.document("products", "p1", store.loader("p1")))
    await store.started.wait()
    for key in ("p1", "p2", "p3", "p4"):  # p1's tombstone is pushed out
        cache.changed("products", [key])
    store.gate.set()
    await slow
    assert len(cache) == 0


async def test_off_when_it_has_no_bytes() -> None:
    cache, store = ReadCache(0, COLLECTIONS), Store()
    for _ in range(2):
        await cache.document("products", "p1", store.loader("p1"))
    assert store.reads == 2
    assert len(cache) == 0


async def test_progress_drops_changes_before_anyone_sees_the_new_position() -> None:
    cache, store = ReadCache(1 << 20, COLLECTIONS), Store()
    progress = Progress(cache)
    store.documents["p1"] = {"_id": "p1", "version": 1}
    await cache.document("products", "p1", store.loader("p1"))
    seen: list[int] = []

    async def reader() -> None:
        await progress.wait_for("products", 2, within=5)
        seen.append((await cache.document("products", "p1", store.loader("p1")))["version"])

    waiting = asyncio.create_task(reader())
    await asyncio.sleep(0)
    store.documents["p1"] = {"_id": "p1", "version": 2}
    progress.advance("products", 2, ["p1"])
    await waiting
    assert seen == [2]
    await cache.document("products", "p1", store.loader("p1"))
    progress.wake_all()  # changes may have been missed
    assert len(cache) == 0


async def test_a_page_is_charged_for_its_documents() -> None:
    documents = [{"_id": f"p{i}", "name": "x" * 1000, "version": i} for i in range(100)]
    page = Page(documents, [f"c{i}" for i in range(100)], True, 100)
    assert cache_module.size_of(page) > cache_module.size_of(documents) > 100_000
    cache = ReadCache(1 << 20, COLLECTIONS)
    for search in range(50):  # 50 distinct searches of ~100 KB each in 1 MiB

        async def load() -> Page:
            return Page([dict(d) for d in documents], [], True, 100)

        await cache.query("products", ("page", f"search{search}"), load)
    assert cache.bytes <= cache.max_bytes
    assert len(cache) < 10
