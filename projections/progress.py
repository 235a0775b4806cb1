"""How far each projection has got, in this process: minVersion waits and change signals.

The relay (in this process) or a :class:`ProgressFollower` (when the relay runs
elsewhere) calls :meth:`Progress.advance`; requests wait on it instead of asking
Mongo again and again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from sqlalchemy.exc import SQLAlchemyError

from projections import checkpoints, readdb
from projections.cache import ReadCache
from projections.recent import RecentEvents
from projections.signals import FEED_PAGE, ProgressFeed

log = logging.getLogger(__name__)


class NotYetConsistent(Exception):
    """A projection did not reach the wanted version within the wait."""

    def __init__(self, projection: str, min_version: int, current_version: int) -> None:
        super().__init__(
            f"projection {projection} is at version {current_version}, "
            f"not yet at {min_version}; try again shortly"
        )
        self.projection = projection
        self.min_version = min_version
        self.current_version = current_version


class Progress:
    def __init__(self, cache: ReadCache | None = None) -> None:
        self.cache = cache
        """Dropped from as changes arrive, before positions move (see projections.cache)."""
        self._positions: dict[str, int] = {}
        self._advanced: dict[str, asyncio.Event] = {}
        self._watchers: dict[tuple[str, Any], set[asyncio.Event]] = defaultdict(set)
        self._waiting = 0
        self.recent_events = RecentEvents()
        """The audit documents the relay in this process wrote last (see projections.recent)."""

    def position(self, projection: str) -> int:
        return self._positions.get(projection, 0)

    @property
    def busy(self) -> bool:
        """Whether anyone is waiting for a version or watching for changes."""
        return self._waiting > 0 or bool(self._watchers)

    def advance(self, projection: str, position: int, keys: Iterable[Any] | None = None) -> None:
        """Records that ``projection`` has applied everything up to ``position``.

        ``keys`` are the ids of the documents that changed; ``None`` means any may have.
        """
        if position <= self._positions.get(projection, 0):
            return
        if self.cache is not None:
            self.cache.changed(projection, keys)
        self._positions[projection] = position
        advanced = self._advanced.pop(projection, None)
        if advanced is not None:
            advanced.set()
        if keys is None:
            watched = [
                w for (name, _), ws in self._watchers.items() if name == projection for w in ws
            ]
        else:
            watched = [w for key in keys for w in self._watchers.get((projection, key), ())]
        for watcher in watched:
            watcher.set()

    async def wait_for(self, projection: str, version: int, within: float) -> int:
        """Waits until ``projection`` is at ``version`` or later; its position then."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        self._waiting += 1
        try:
            while (current := self.position(projection)) < version:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise NotYetConsistent(projection, version, current)
                advanced = self._advanced.setdefault(projection, asyncio.Event())
                await wait_set(advanced, remaining)
            return current
        finally:
            self._waiting -= 1

    def forget_cached(self) -> None:
        """Empties the read cache: changes may have been missed."""
        if self.cache is not None:
            self.cache.clear()

    def wake_all(self) -> None:
        """Every watcher looks again and the cache empties (changes may have been missed)."""
        self.forget_cached()
        for watchers in self._watchers.values():
            for watcher in watchers:
                watcher.set()

    @contextlib.asynccontextmanager
    async def watch(self, projection: str, key: Any) -> AsyncIterator[asyncio.Event]:
        """An event that is set whenever the document ``key`` of ``projection`` may have changed."""
        changed = asyncio.Event()
        watchers = self._watchers[(projection, key)]
        watchers.add(changed)
        try:
            yield changed
        finally:
            watchers.discard(changed)
            if not watchers:
                del self._watchers[(projection, key)]


async def wait_set(event: asyncio.Event, seconds: float) -> None:
    """Waits until ``event`` is set, ``seconds`` at most.

    Not ``asyncio.wait_for``: on Python 3.11 it swallows a cancellation that arrives
    just as the awaited event is set (python/cpython#86296), and a loop around it then
    never ends: a relay or follower cancelled at shutdown while commits wake it would
    run on until the shutdown watchdog killed the process.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


class ProgressFollower:
    """Keeps :class:`Progress` current when the relay runs in another process (or this
    process's relay stands by).

    It applies the relay's progress feed (``projections.signals``) whenever it is
    signalled: positions and the keys of the documents that changed, so requests and
    subscriptions wake as in the relay's own process. It reads the checkpoints
    themselves at start, whenever the feed shows a new relay tenure (a rebuild may
    have switched collections, see ``projections.readdb``), and every
    ``safety_interval`` in case the feed missed something. When it may have missed
    rows (a gap in ids, a publisher that lost some), every watcher looks again.
    Requests themselves never poll.
    """

    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        progress: Progress,
        feed: ProgressFeed,
        *,
        safety_interval: float = 1.0,
        needed: Callable[[], bool] = lambda: True,
    ) -> None:
        self.db = db
        self.progress = progress
        self.feed = feed
        self.safety_interval = safety_interval
        # False while a relay in this process applies events and reports progress itself.
        self.needed = needed
        self.last_id = 0
        self.epoch = 0
        self._signalled = asyncio.Event()
        self._following = False

    def signal(self) -> None:
        """A relay may have published progress (see ``WriteStoreSignals``)."""
        self._signalled.set()

    async def start(self) -> None:
        """Positions from the checkpoints, and the feed from its end on."""
        self.last_id = await self.feed.last_id()
        await self.poll_checkpoints()
        self._following = self.needed()

    async def poll_checkpoints(self) -> None:
        stored = await checkpoints.load_all(self.db)
        readdb.switch(self.db, stored.values())  # before progress: see projections.readdb
        for name, checkpoint in stored.items():
            self.progress.advance(name, checkpoint.position)
            self.epoch = max(self.epoch, checkpoint.epoch)

    async def catch_up(self) -> None:
        """Applies the feed's rows after the last one applied."""
        missed = False
        while True:
            rows = await self.feed.read_after(self.last_id)
            for row in rows:
                if row.id != self.last_id + 1 or row.resync:
                    # Rows (and their changed keys) were lost: nothing cached can be trusted,
                    # and this must happen before any position moves past them.
                    missed = True
                    self.progress.forget_cached()
                if row.epoch > self.epoch:
                    await self.poll_checkpoints()  # a new tenure: collections may differ
                    self.epoch = max(self.epoch, row.epoch)
                for advance in row.advances:
                    self.progress.advance(advance.projection, advance.position, advance.keys)
                self.last_id = row.id
            if len(rows) < FEED_PAGE:
                break
        if missed:
            self.progress.wake_all()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        polled = loop.time()
        while True:
            await wait_set(self._signalled, self.safety_interval)
            self._signalled.clear()
            # The safety poll is due by the clock, however often signals come (on SQLite
            # every commit of any process is one).
            due = loop.time() - polled >= self.safety_interval
            try:
                await self._step(due)
            except (PyMongoError, SQLAlchemyError, OSError):
                log.warning("following the relay's progress failed", exc_info=True)
            if due:
                polled = loop.time()

    async def _step(self, poll_due: bool) -> None:
        if not self.needed():
            self._following = False
            return
        if not self._following:  # the local relay stopped: rows it skipped do not matter
            await self.start()
            self.progress.wake_all()
            return
        await self.catch_up()
        if poll_due:
            await self.poll_checkpoints()
