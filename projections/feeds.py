"""Shared document feeds: one read per change of a watched document, however many watch it.

Without them every subscriber of a document reloads it from Mongo on every
change, so one change to a product watched by 5,000 clients costs 5,000 reads.
A :class:`Feed` loads the document once per change and hands the same
document to all its subscribers; it lives while anyone follows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from projections.progress import Progress

log = logging.getLogger(__name__)

Document = dict[str, Any]
# Back-off of a feed whose read failed: from the first retry to the longest wait.
RETRY_FIRST = 0.05
RETRY_MOST = 5.0
Loader = Callable[[], Awaitable[Document | None]]


class DocumentMissing(LookupError):
    """The followed document does not exist."""


class Feed:
    """The latest loaded version of one document, and a signal when a newer one is loaded."""

    def __init__(self, progress: Progress, projection: str, key: Any, load: Loader) -> None:
        self.progress = progress
        self.projection = projection
        self.key = key
        self.load = load
        self.document: Document | None = None
        self.error: BaseException | None = None
        self.as_of = -1
        """The projection's position before the current document was read."""
        self.subscribers = 0
        self._loaded = asyncio.Event()
        self._reload = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"feed {self.projection} {self.key}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        async with self.progress.watch(self.projection, self.key) as changed:
            while True:
                changed.clear()
                self._reload.clear()
                as_of = self.progress.position(self.projection)
                try:
                    document = await self._load()
                except DocumentMissing as missing:  # every follower gets it; the feed ends
                    self.error = missing
                    self._publish()
                    return
                if self.document is None or document["version"] > self.document["version"]:
                    self.document = document
                self.as_of = as_of
                self._publish()
                await _first(changed.wait(), self._reload.wait())

    async def _load(self) -> Document:
        """The document; a failed read is tried again (backing off) until it succeeds,
        so a passing fault of the read store ends nobody's subscription."""
        backoff = RETRY_FIRST
        while True:
            try:
                document = await self.load()
            except Exception:
                log.warning(
                    "reading %s document %s failed; again in %.1fs",
                    self.projection, self.key, backoff, exc_info=True,
                )  # fmt: skip
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_MOST)
                continue
            if document is None:
                raise DocumentMissing(f"no {self.projection} document {self.key}")
            return document

    def _publish(self) -> None:
        loaded, self._loaded = self._loaded, asyncio.Event()
        loaded.set()

    async def after(self, version: int, as_of: int) -> Document:
        """The document once it is newer than ``version`` and read at ``as_of`` or later."""
        while True:
            if self.error is not None:
                raise self.error
            document = self.document
            if document is not None and document["version"] > version and self.as_of >= as_of:
                return document
            if self.as_of < as_of:
                self._reload.set()
            await self._loaded.wait()


class Feeds:
    """The process's feeds, by projection and document key."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self._feeds: dict[tuple[str, Any], Feed] = {}

    def __len__(self) -> int:
        return len(self._feeds)

    @contextlib.asynccontextmanager
    async def follow(self, projection: str, key: Any, load: Loader) -> AsyncIterator[Feed]:
        feed = self._feeds.get((projection, key))
        if feed is None or feed.error is not None:
            feed = self._feeds[(projection, key)] = Feed(self.progress, projection, key, load)
            feed.start()
        feed.subscribers += 1
        try:
            yield feed
        finally:
            feed.subscribers -= 1
            if feed.subscribers == 0:
                if self._feeds.get((projection, key)) is feed:
                    del self._feeds[(projection, key)]
                await feed.stop()

    async def documents(self, projection: str, key: Any, load: Loader) -> AsyncIterator[Document]:
        """The document now, then again whenever a newer version is loaded."""
        async with self.follow(projection, key, load) as feed:
            version = -1
            # What the caller has already waited for (minVersion) must be in the first one.
            as_of = self.progress.position(projection)
            while True:
                document = await feed.after(version, as_of)
                version = document["version"]
                yield document


async def _first(*waits: Awaitable[Any]) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
