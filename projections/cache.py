"""A versioned in-process cache of read-model documents, kept exact by the relay's change keys.

Without it every read of a query or subscription is a read-store round trip (0.6-2 ms
on FerretDB), even for a document that has not changed in an hour. This cache keeps
documents (by ``_id``) and small query results in memory, bounded in bytes with LRU
eviction, and drops them the moment this process learns they may have changed.

**Why it never answers stale.** A process learns of changes from one place:
:meth:`projections.progress.Progress.advance`, called by its own relay after a batch
is in the read store, or by its ``ProgressFollower`` from the relay's progress feed;
both carry the ids of the documents that changed (or "any may have"). ``advance``
invalidates those entries *before* it moves the projection's position. So once a
request has waited for ``minVersion`` (or simply sees position P), nothing in the
cache predates what the store held at P: an entry still there was not changed by
any event up to P. A rebuild's swap (``projections.readdb``) empties the
collections it switches.

**Fills racing invalidations.** A miss reads the store and then stores what it read;
an invalidation in between would leave the older document behind for good. Each
read takes a *token* (a clock bumped by every invalidation) before it starts, and
its result is stored only if nothing invalidated that key, or its whole collection,
since. Invalidated keys are remembered (tombstones) while reads that started before
them may still be running; the memory for them is bounded: dropping the oldest raises
a floor below which no fill is accepted.

**Concurrent misses share one read**, but only a read that started after the key's
last invalidation: an invalidation detaches the reads in flight for it.

Documents are shared between requests: callers must not change them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

# What an entry costs besides its key and value: the slot tuple, the (value, size)
# tuple and the ordered dict's node (measured with tracemalloc: about 190 bytes).
ENTRY_OVERHEAD = 200
MAX_TOMBSTONES = 10_000
_QUERIES = object()
"""Key prefix of query results: dropped by any change to their collection."""


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    invalidations: int = 0
    refused_fills: int = 0


def size_of(value: Any) -> int:
    """The bytes of memory ``value`` holds: every object in it (documents, lists, tuples,
    dataclasses such as a page, and what they hold) by ``sys.getsizeof``.

    A document costs about five times its BSON size as Python objects, so this, not the
    BSON size, is what keeps the process's memory within the budget. Objects shared
    between entries are counted for each (an overestimate, which errs on the safe side).
    """
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        total += sys.getsizeof(item)
        kind = type(item)
        if kind is dict:
            for key, field in item.items():
                total += sys.getsizeof(key)
                stack.append(field)
        elif kind is list or kind is tuple:
            stack.extend(item)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            stack.extend(getattr(item, f.name) for f in dataclasses.fields(item))
    return total


def entry_size(slot: tuple[str, Any], value: Any) -> int:
    """What an entry is charged: its key (collection and key), its value, its slot."""
    return size_of(slot) + size_of(value) + ENTRY_OVERHEAD


class ReadCache:
    """Documents and query results by (collection, key), at most ``max_bytes``.

    ``collections`` maps each projection to the collections it writes (logical
    names), so a change reported for a projection reaches every one of them.
    """

    def __init__(self, max_bytes: int, collections: Mapping[str, Sequence[str]]) -> None:
        self.max_bytes = max_bytes
        self.collections = {name: tuple(c) for name, c in collections.items()}
        self.bytes = 0
        self.stats = CacheStats()
        self._entries: OrderedDict[tuple[str, Any], tuple[Any, int]] = OrderedDict()
        self._queries: dict[str, set[tuple[str, Any]]] = {}
        self._clock = 0
        self._tombstones: OrderedDict[tuple[str, Any], int] = OrderedDict()
        self._cleared: dict[str, int] = {}
        self._floor = 0
        self._reading = 0
        self._loading: dict[tuple[str, Any], asyncio.Future[Any]] = {}

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    async def document(self, collection: str, key: Any, load: Callable[[], Awaitable[T]]) -> T:
        """The document ``key`` of ``collection`` (None if missing), from memory or ``load``."""
        return await self._get((collection, key), load)

    async def query(self, collection: str, key: Any, load: Callable[[], Awaitable[T]]) -> T:
        """A query's result on ``collection``, identified by ``key`` (hashable): dropped
        whenever any document of the collection's projection changes."""
        return await self._get((collection, (_QUERIES, key)), load)

    async def _get(self, slot: tuple[str, Any], load: Callable[[], Awaitable[T]]) -> T:
        if not self.enabled:
            return await load()
        entry = self._entries.get(slot)
        if entry is not None:
            self._entries.move_to_end(slot)
            self.stats.hits += 1
            return entry[0]  # type: ignore[no-any-return]
        self.stats.misses += 1
        while (shared := self._loading.get(slot)) is not None:
            try:
                return await asyncio.shield(shared)
            except asyncio.CancelledError:
                if not shared.cancelled():
                    raise  # this caller was cancelled
                # the read it shared was cancelled (its own caller went away): read again
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._loading[slot] = future
        token = self._clock
        self._reading += 1
        try:
            value = await load()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        else:
            future.set_result(value)
            self._fill(slot, value, token)
            return value
        finally:
            if self._loading.get(slot) is future:
                del self._loading[slot]
            self._reading -= 1
            if self._reading == 0 and self._tombstones:
                # Every read in flight started after every tombstone: none can matter.
                self._floor = self._clock
                self._tombstones.clear()

    def _fill(self, slot: tuple[str, Any], value: Any, token: int) -> None:
        collection = slot[0]
        if (
            token < self._floor
            or token < self._cleared.get(collection, 0)
            or token < self._tombstones.get(slot, 0)
            or (self._is_query(slot) and token < self._tombstones.get((collection, _QUERIES), 0))
        ):
            self.stats.refused_fills += 1
            return
        size = entry_size(slot, value)
        if size > self.max_bytes // 4:
            return  # one entry may not push out most of the others
        self._drop(slot)
        self._entries[slot] = (value, size)
        self.bytes += size
        if self._is_query(slot):
            self._queries.setdefault(collection, set()).add(slot)
        while self.bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.stats.evictions += 1

    @staticmethod
    def _is_query(slot: tuple[str, Any]) -> bool:
        key = slot[1]
        return isinstance(key, tuple) and len(key) == 2 and key[0] is _QUERIES

    def _drop(self, slot: tuple[str, Any]) -> None:
        entry = self._entries.pop(slot, None)
        if entry is not None:
            self.bytes -= entry[1]
            if self._is_query(slot):
                self._queries.get(slot[0], set()).discard(slot)

    # Invalidation: called before the position that includes the change is published.

    def changed(self, projection: str, keys: Iterable[Any] | None) -> None:
        """The documents ``keys`` (None: any) of ``projection``'s collections may have changed."""
        collections = self.collections.get(projection)
        if collections is None:
            self.clear()
            return
        if keys is None:
            self.clear(collections)
            return
        self._clock += 1
        self.stats.invalidations += 1
        keys = list(keys)
        for collection in collections:
            for key in keys:
                slot = (collection, key)
                self._drop(slot)
                self._loading.pop(slot, None)
                self._tombstone(slot)
            self._drop_queries(collection)

    def clear(self, collections: Iterable[str] | None = None) -> None:
        """Empties ``collections`` (logical names; None: everything)."""
        self._clock += 1
        self.stats.invalidations += 1
        if collections is None:
            self._entries.clear()
            self._queries.clear()
            self._loading.clear()
            self.bytes = 0
            self._floor = self._clock
            self._tombstones.clear()
            return
        names = set(collections)
        for name in names:
            self._cleared[name] = self._clock
        for slot in [s for s in self._entries if s[0] in names]:
            self._drop(slot)
        for slot in [s for s in self._loading if s[0] in names]:
            del self._loading[slot]

    def _drop_queries(self, collection: str) -> None:
        for slot in list(self._queries.get(collection, ())):
            self._drop(slot)
            self._loading.pop(slot, None)
        for slot in [s for s in self._loading if s[0] == collection and self._is_query(s)]:
            del self._loading[slot]
        self._tombstone((collection, _QUERIES))

    def _tombstone(self, slot: tuple[str, Any]) -> None:
        if self._reading == 0:
            return  # no read in flight: every later one starts after this change
        self._tombstones[slot] = self._clock
        self._tombstones.move_to_end(slot)
        while len(self._tombstones) > MAX_TOMBSTONES:
            _, clock = self._tombstones.popitem(last=False)
            self._floor = max(self._floor, clock)
