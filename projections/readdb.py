"""Which physical collection serves each read model: what makes a rebuild's swap atomic.

A rebuild writes fresh collections (``products__g7``) beside the live ones and then
switches, per projection, its position and its collections in one update of its
checkpoint document (``projections.checkpoints``). Nothing is renamed or dropped
under a reader: FerretDB 1.24 has no atomic ``renameCollection`` with
``dropTarget``, and a drop followed by a rename showed readers an empty collection.

:class:`ReadDatabase` is the database every reader and the live relay use: it
resolves a read model's name to the collection that serves it now. Each process
learns of a switch from the checkpoints (its relay at the start of a tenure, or
its ``CheckpointFollower``) *before* it learns of the new position, so a reader
waiting for a version reads the collection that holds it. The replaced collections
are dropped by the rebuild after a grace period, by when every process has switched.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from projections.checkpoints import Checkpoint

Document = dict[str, Any]


class ReadDatabase(AsyncDatabase[Document]):
    """An ``AsyncDatabase`` that maps read-model names to the collections serving them."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        super().__init__(db.client, db.name, db.codec_options)
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
            self.serving.update(checkpoint.collections)


def switch(db: AsyncDatabase[Document], checkpoints: Iterable[Checkpoint]) -> None:
    """:meth:`ReadDatabase.switch` for a database that maps names; others have one each."""
    if isinstance(db, ReadDatabase):
        db.switch(checkpoints)
