"""The admin mutations' work in this process: rebuilding projections and resuming a
stalled one (``rebuildProjections`` and ``resumeProjection``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from projections.projection import Projection
from projections.rebuild import RebuildRunning, rebuild, rebuild_running
from projections.registry import projection_names, select
from projections.relay import Relay, RelayOptions
from projections.signals import request_resume
from projections.status import projection_states
from schema.context import Refusal

log = logging.getLogger(__name__)

# How long rebuildProjections waits for the rebuild to show as REBUILDING before it
# answers; it answers success then anyway (the rebuild goes on).
START_WAIT = 10.0


class ProjectionAdmin:
    """The :class:`~schema.context.AdminActions` of this process, given what they use."""

    def __init__(
        self,
        engine: AsyncEngine,
        read_store: AsyncDatabase[dict[str, Any]],
        db: AsyncDatabase[dict[str, Any]],
        *,
        relay: Relay | None,
        relay_options: RelayOptions,
        prepared: Callable[[], Awaitable[None]],
        tasks: set[asyncio.Task[None]],
    ) -> None:
        """``read_store`` is the read store's database as the CLI's rebuild sees it, without
        this process's cache (the live relay empties the cache when it switches); ``db``
        is what requests read. ``prepared`` is what a rebuild awaits once its fresh
        collections exist; ``tasks`` holds the rebuilds started here (cancelled at
        shutdown)."""
        self.engine = engine
        self.read_store = read_store
        self.db = db
        self.relay = relay
        self.relay_options = relay_options
        self.prepared = prepared
        self.tasks = tasks

    async def rebuild_projections(self, names: list[str] | None) -> list[Refusal]:
        """Starts the CLI's blue-green rebuild in this process and answers once it shows as
        REBUILDING in ``projections`` (or was refused); the rebuild goes on after."""
        chosen, unknown = select(names)
        if unknown:
            known = ", ".join(projection_names())
            return [
                Refusal("VALIDATION_FAILED", f"no projection {name!r}; known: {known}",
                        f"names.{n}")
                for n, name in enumerate(names or ()) if name in unknown
            ]  # fmt: skip
        # The write store's lease, not the read store's mirror: it says who holds the
        # lease, whether they still renew it and when it expires.
        try:
            running = await rebuild_running(self.engine, self.read_store)
        except SQLAlchemyError as error:
            return [Refusal("UNAVAILABLE", f"the write store is unavailable: {error}")]
        if running is not None:
            return [Refusal("INVALID_STATE", str(running))]
        started = asyncio.Event()
        task = asyncio.create_task(self._rebuild(chosen, started), name="admin rebuild")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(_retrieved)  # its failure is logged in _rebuild
        waiting = asyncio.create_task(started.wait())
        try:
            await asyncio.wait({task, waiting}, timeout=START_WAIT, return_when="FIRST_COMPLETED")
        finally:
            waiting.cancel()
        if task.done() and not started.is_set():
            if task.cancelled():
                return [Refusal("UNAVAILABLE", "the server is shutting down")]
            failure = task.exception()
            if isinstance(failure, RebuildRunning):
                return [Refusal("INVALID_STATE", str(failure))]
            return [Refusal("UNAVAILABLE", f"the rebuild failed to start: {failure!r}")]
        return []

    async def _rebuild(self, chosen: list[Projection], started: asyncio.Event) -> None:
        names = ", ".join(p.name for p in chosen)
        log.warning("rebuilding %s (asked by an admin)", names)
        try:
            result = await rebuild(
                self.engine, self.read_store, chosen,
                prepared=self.prepared, started=started.set, **self.relay_options,
            )  # fmt: skip
        except Exception as error:
            if not isinstance(error, RebuildRunning):
                log.exception("the rebuild of %s failed", names)
            raise
        log.warning("rebuilt %s up to version %d", names, result.position)

    async def resume_projection(self, name: str) -> list[Refusal]:
        """Ends a STALLED projection's back-off now, in this process's relay and, through
        the write store, in the relay processes (PostgreSQL)."""
        if select([name])[1]:
            known = ", ".join(projection_names())
            return [Refusal("VALIDATION_FAILED", f"no projection {name!r}; known: {known}", "name")]
        try:
            states = {s.name: s for s in await projection_states(self.db)}
        except PyMongoError as error:
            return [Refusal("UNAVAILABLE", f"the read store is unavailable: {error}")]
        if states[name].state != "STALLED":
            return [Refusal("INVALID_STATE", f"{name} is {states[name].state}, not STALLED")]
        if self.relay is not None:
            self.relay.retry_now()
        try:
            await request_resume(self.engine)
        except SQLAlchemyError as error:
            if self.relay is None:
                return [Refusal("UNAVAILABLE", f"the write store is unavailable: {error}")]
        return []


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
