"""The command bus: runs one command in one unit of work, with idempotency keys."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from domain import idempotency
from domain.commands import Command
from domain.errors import IdempotencyKeyReused, ValidationFailed
from domain.handlers import HANDLERS, Handler
from domain.idempotency import CommandOutcome
from domain.uow import UnitOfWork, utcnow

log = logging.getLogger(__name__)

MAX_IDEMPOTENCY_KEY_LENGTH = 200
# A unique constraint can still fire when two transactions race past the same check
# (two first uses of one idempotency key, two products with one SKU on PostgreSQL).
# Running the command again lets it see the winner and answer as if it came second.
ATTEMPTS = 3


class CommandBus:
    """Dispatches commands to their handlers and tells listeners of every commit."""

    def __init__(
        self,
        engine: AsyncEngine,
        handlers: dict[type[Command], Handler] = HANDLERS,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.handlers = handlers
        self.clock = clock
        self._listeners: list[Callable[[int], None]] = []

    def on_commit(self, listener: Callable[[int], None]) -> None:
        """Calls ``listener(position)`` after every commit that wrote events."""
        self._listeners.append(listener)

    async def execute(
        self,
        command: Command,
        idempotency_key: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> CommandOutcome:
        """Runs ``command``; raises a ``DomainError`` if it is refused, with nothing written."""
        if idempotency_key is not None and not (
            1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_LENGTH
        ):
            raise ValidationFailed(
                f"idempotencyKey must be 1-{MAX_IDEMPOTENCY_KEY_LENGTH} characters",
                "idempotencyKey",
            )
        handler = self.handlers[type(command)]
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return await self._execute_once(command, handler, idempotency_key, metadata)
            except IntegrityError:
                if attempt == ATTEMPTS:
                    raise
                log.info("command %s lost a race, running it again", type(command).__name__)
        raise AssertionError("unreachable")

    async def _execute_once(
        self,
        command: Command,
        handler: Handler,
        key: str | None,
        metadata: dict[str, Any] | None,
    ) -> CommandOutcome:
        request_hash = idempotency.fingerprint(command) if key is not None else ""
        async with UnitOfWork(self.engine, self.clock) as uow:
            uow.metadata = {**(metadata or {}), "command": type(command).__name__}
            if key is not None:
                uow.metadata["idempotencyKey"] = key
                stored = await idempotency.find(uow.conn, key)
                if stored is not None:
                    if stored.request_hash != request_hash:
                        raise IdempotencyKeyReused(
                            "this idempotencyKey was used for a different command",
                            "idempotencyKey",
                        )
                    return stored.outcome
            aggregate = await handler(command, uow)
            written = await uow.flush()
            position = written if written is not None else await uow.head()
            outcome = CommandOutcome(aggregate.id, position, aggregate.version)
            if key is not None:
                await idempotency.remember(uow.conn, key, command, request_hash, outcome, uow.now)
            await uow.commit()
        if written is not None:
            for listener in self._listeners:
                listener(written)
        return outcome
