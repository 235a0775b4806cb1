"""Which physical collection serves each read model: what makes a rebuild's swap atomic.

A rebuild writes fresh collections (``products__g7``) beside the live ones and then
switches, per projection, its position and its collections in one update of its
checkpoint document (``projections.checkpoints``). Nothing is renamed or dropped
under a reader: FerretDB 1.24 has no atomic ``renameCollection`` with
``dropTarget``, and a drop followed by a rename showed readers an empty collection.

:class:`ReadDatabase` is the database every reader and the live relay use: it
resolves a read model's name to the collection that serves it now. Each process
learns of a switch from the checkpoints (its relay at the start of a tenure, or
its ``ProgressFollower``) *before* it learns of the new position, so a reader
waiting for a version reads the collection that holds it. The replaced collections
are dropped by the rebuild after a grace period, by when every process has switched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any, TypeVar

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from projections.cache import ReadCache
from projections.checkpoints import Checkpoint

Document = dict[str, Any]
T = TypeVar("T")


class ReadDatabase(AsyncDatabase[Document]):
    """An ``AsyncDatabase`` that maps read-model names to the collections serving them."""

    def __init__(self, db: AsyncDatabase[Document], cache: ReadCache | None = None) -> None:
        super().__init__(db.client, db.name, db.codec_options)
        self.cache = cache
        """This process's read cache (see projections.cache); None: none."""
        self.serving: dict[str, str] = {}
        self._as_of: dict[str, tuple[int, int]] = {}

    def __getitem__(self, name: str) -> AsyncCollection[Document]:
        return super().__getitem__(self.serving.get(name, name))

    def get_collection(self, name: str, *args: Any, **kwargs: Any) -> AsyncCollection[Document]:
        return super().get_collection(self.serving.get(name, name), *args, **kwargs)

    def switch(self, checkpoints: Iterable[Checkpoint]) -> None:
        """Takes the collections each checkpoint names (call before advancing progress),
        unless this process knows a newer switch already: a read of the checkpoints from
        before a switch that arrives after it never switches back."""
        for checkpoint in checkpoints:
            as_of = (checkpoint.epoch, checkpoint.position)
            if not checkpoint.collections or as_of < self._as_of.get(checkpoint.name, as_of):
                continue
            self._as_of[checkpoint.name] = as_of
            moved = [n for n, c in checkpoint.collections.items() if self.serving.get(n, n) != c]
            self.serving.update(checkpoint.collections)
            if moved and self.cache is not None:
                self.cache.clear(moved)


def switch(db: AsyncDatabase[Document], checkpoints: Iterable[Checkpoint]) -> None:
    """:meth:`ReadDatabase.switch` for a database that maps names; others have one each."""
    if isinstance(db, ReadDatabase):
        db.switch(checkpoints)


async def find_by_id(db: AsyncDatabase[Document], collection: str, key: Any) -> Document | None:
    """The document ``key`` of read model ``collection``, from this process's cache when
    it holds it (see projections.cache)."""
    cache = db.cache if isinstance(db, ReadDatabase) else None

    async def load() -> Document | None:
        return await db[collection].find_one({"_id": key})

    return await load() if cache is None else await cache.document(collection, key, load)


async def cached_query(
    db: AsyncDatabase[Document], collection: str, key: Hashable, load: Callable[[], Awaitable[T]]
) -> T:
    """``load()``'s result, a query on read model ``collection`` identified by ``key``: kept
    until any document of its projection changes."""
    cache = db.cache if isinstance(db, ReadDatabase) else None
    return await load() if cache is None else await cache.query(collection, key, load)
