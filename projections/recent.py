"""The newest audit-trail documents the relay in this process wrote, for the events feed.

The ``events`` subscription reads every new event once per relay batch for every
subscriber; from Mongo that is a range query per subscriber per batch (on FerretDB
a scan of the whole trail). The relay hands the documents it has just written to
this buffer, and the subscription reads them from memory whenever the buffer holds
every position it needs; otherwise (an ``api`` process, a long catch-up) it reads
Mongo as before.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

Document = dict[str, Any]


def as_stored(document: Document) -> Document:
    """The document as Mongo gives it back: datetimes to the millisecond."""
    return {
        key: value.replace(microsecond=value.microsecond // 1000 * 1000)
        if isinstance(value, datetime)
        else value
        for key, value in document.items()
    }


class RecentEvents:
    """Audit documents with contiguous positions (``_id``), the newest ``size`` of them."""

    def __init__(self, size: int = 10_000) -> None:
        self._documents: deque[Document] = deque(maxlen=size)

    def add(self, documents: Iterable[Document]) -> None:
        for document in documents:
            newest = self._documents[-1]["_id"] if self._documents else None
            if newest is not None and document["_id"] <= newest:
                continue  # a replayed batch: already here
            if newest is not None and document["_id"] != newest + 1:
                self._documents.clear()  # a gap: what is here no longer covers a range
            self._documents.append(as_stored(document))

    def clear(self) -> None:
        self._documents.clear()

    def between(
        self, after: int, up_to: int, types: Sequence[str] | None, limit: int
    ) -> list[Document] | None:
        """Like ``audit.events_between``, or ``None`` unless every position is here."""
        if not self._documents:
            return None
        oldest, newest = self._documents[0]["_id"], self._documents[-1]["_id"]
        if oldest > after + 1 or newest < up_to:
            return None
        wanted = set(types) if types else None
        window = itertools.islice(self._documents, after + 1 - oldest, up_to + 1 - oldest)
        matching = (d for d in window if wanted is None or d["type"] in wanted)
        return list(itertools.islice(matching, limit))
