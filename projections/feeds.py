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

from pymongo.errors import PyMongoError

from projections.progress import Progress

log = logging.getLogger(__name__)

Document = dict[str, Any]
# Back-off of a feed whose read failed: from the first retry to the longest wait, and
# how long a streak of failures may last before the feed gives up.
RETRY_FIRST = 0.05
RETRY_MOST = 5.0
RETRY_FOR = 60.0
Loader = Callable[[], Awaitable[Document | None]]


class DocumentMissing(LookupError):
    """The followed document does not exist."""


class StoreUnavailable(ConnectionError):
    """The read store failed every read of a feed for ``RETRY_FOR`` seconds."""


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
                except Exception as error:  # every follower gets it; the feed ends
                    self.error = error
                    self._publish()
                    return
                if self.document is None or document["version"] > self.document["version"]:
                    self.document = document
                self.as_of = as_of
                self._publish()
                await _first(changed.wait(), self._reload.wait())

    async def _load(self) -> Document:
        """The document. A read the store failed is tried again, backing off, so a passing
        fault of the read store ends nobody's subscription; a streak of failures is logged
        once, and after ``RETRY_FOR`` seconds it ends the feed (:class:`StoreUnavailable`).
        Any other error ends the feed at once: trying again would fail again."""
        backoff, failures = RETRY_FIRST, 0
        deadline = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                document = await self.load()
            except PyMongoError as error:
                if failures == 0:
                    deadline = loop.time() + RETRY_FOR
                    log.warning(
                        "reading %s document %s failed (%s); trying again for %.0fs",
                        self.projection, self.key, _summary(error), RETRY_FOR,
                    )  # fmt: skip
                failures += 1
                if loop.time() + backoff > deadline:
                    log.warning(
                        "reading %s document %s failed %d times in %.0fs; its subscribers "
                        "are told the store is unavailable",
                        self.projection, self.key, failures, RETRY_FOR,
                    )  # fmt: skip
                    raise StoreUnavailable(str(error)) from error
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_MOST)
                continue
            if failures:
                log.info(
                    "reading %s document %s works again after %d failures",
                    self.projection, self.key, failures,
                )  # fmt: skip
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


def _summary(error: BaseException) -> str:
    """The error on one short line: store errors can carry whole server replies."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:200]}"


async def _first(*waits: Awaitable[Any]) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
