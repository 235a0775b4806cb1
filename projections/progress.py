"""How far each projection has got, in this process: minVersion waits and change signals.

The relay (in this process) or a :class:`CheckpointFollower` (when the relay runs
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

from projections import checkpoints, readdb
from projections.recent import RecentEvents

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
    def __init__(self) -> None:
        self._positions: dict[str, int] = {}
        self._advanced: dict[str, asyncio.Event] = {}
        self._watchers: dict[tuple[str, Any], set[asyncio.Event]] = defaultdict(set)
        self._waiting = 0
        self.demand = asyncio.Event()
        """Set when someone starts waiting or watching, so a follower looks at once."""
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
        self.demand.set()
        try:
            while (current := self.position(projection)) < version:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise NotYetConsistent(projection, version, current)
                advanced = self._advanced.setdefault(projection, asyncio.Event())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(advanced.wait(), remaining)
            return current
        finally:
            self._waiting -= 1

    @contextlib.asynccontextmanager
    async def watch(self, projection: str, key: Any) -> AsyncIterator[asyncio.Event]:
        """An event that is set whenever the document ``key`` of ``projection`` may have changed."""
        changed = asyncio.Event()
        watchers = self._watchers[(projection, key)]
        watchers.add(changed)
        self.demand.set()
        try:
            yield changed
        finally:
            watchers.discard(changed)
            if not watchers:
                del self._watchers[(projection, key)]


class CheckpointFollower:
    """Keeps :class:`Progress` current when the relay runs in another process.

    One loop per process reads the small checkpoint collection: every
    ``fast_interval`` while a request waits or a subscription watches, else every
    ``slow_interval``. Requests themselves never poll.
    """

    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        progress: Progress,
        fast_interval: float = 0.02,
        slow_interval: float = 1.0,
        needed: Callable[[], bool] = lambda: True,
    ) -> None:
        self.db = db
        self.progress = progress
        self.fast_interval = fast_interval
        self.slow_interval = slow_interval
        # False while a relay in this process applies events and reports progress itself.
        self.needed = needed

    async def poll_once(self) -> None:
        stored = await checkpoints.load_all(self.db)
        readdb.switch(self.db, stored.values())  # before progress: see projections.readdb
        for name, checkpoint in stored.items():
            self.progress.advance(name, checkpoint.position)

    async def run(self) -> None:
        while True:
            if self.needed():
                try:
                    await self.poll_once()
                except PyMongoError:
                    log.exception("reading projection checkpoints failed")
            demand = self.progress.demand
            demand.clear()
            if self.progress.busy and self.needed():
                await asyncio.sleep(self.fast_interval)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(demand.wait(), self.slow_interval)
