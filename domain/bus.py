"""The command bus: runs one command in one unit of work, with idempotency keys."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from domain import idempotency, validation
from domain.commands import Command
from domain.errors import DomainError, IdempotencyKeyReused, Problems, ValidationFailed
from domain.handlers import HANDLERS, Handler
from domain.idempotency import CommandOutcome
from domain.uow import UnitOfWork, utcnow
from domain.writer import Transactions

log = logging.getLogger(__name__)

MAX_IDEMPOTENCY_KEY_LENGTH = 200
# A unique constraint can still fire when two transactions race past the same check
# (two first uses of one idempotency key, two products with one SKU on PostgreSQL).
# Running the command again lets it see the winner and answer as if it came second.
ATTEMPTS = 3


@dataclass(eq=False)
class _Request:
    command: Command
    handler: Handler
    key: str | None
    metadata: dict[str, Any] | None
    future: asyncio.Future[CommandOutcome]


def _answer(request: _Request, result: CommandOutcome | BaseException) -> None:
    """Gives the caller its outcome or error, unless it has one already."""
    if request.future.done():
        return
    if isinstance(result, BaseException):
        request.future.set_exception(result)
    else:
        request.future.set_result(result)


def _consume(future: asyncio.Future[CommandOutcome]) -> None:
    if not future.cancelled():
        future.exception()


def _check_input(command: Command, key: str | None) -> None:
    """Refuses, before the store is touched, text it could not keep and a bad key."""
    problems = Problems()
    for problem in validation.invalid_text(command):
        problems.add(problem)
    if key is not None:
        if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
            problems.add(
                ValidationFailed(
                    f"idempotencyKey must be 1-{MAX_IDEMPOTENCY_KEY_LENGTH} characters",
                    "idempotencyKey",
                )
            )
        else:
            problems.add(validation.text_problem(key, "idempotencyKey"))
    problems.raise_if_any()


class _BatchAborted(Exception):
    """A command of a group failed after writing; the group runs again one by one."""


class CommandBus:
    """Dispatches commands to their handlers and tells listeners of every commit.

    With ``group_commit`` (the default), commands that arrive while a transaction is
    being written wait and then run together in the next one, in arrival order, each
    seeing the ones before it: the same result as running them one after another,
    for the price of one commit. A command refused before it wrote anything just
    answers its error; one that fails after writing (a reservation it must undo, a
    lost race) aborts the group, which then runs again one command per transaction.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        handlers: dict[type[Command], Handler] = HANDLERS,
        clock: Callable[[], datetime] = utcnow,
        *,
        group_commit: bool = True,
        max_group: int = 64,
    ) -> None:
        self.engine = engine
        self.handlers = handlers
        self.clock = clock
        self.group_commit = group_commit
        self.max_group = max_group
        self._listeners: list[Callable[[int], None]] = []
        self._pending: list[_Request] = []
        self._writer: asyncio.Task[None] | None = None
        self._transactions = Transactions(engine, clock)

    def close(self) -> None:
        """Stops the SQLite writer thread, if any (it holds one connection)."""
        self._transactions.close()

    def on_commit(self, listener: Callable[[int], None]) -> None:
        """Calls ``listener(position)`` after every commit that wrote events."""
        self._listeners.append(listener)

    async def execute(
        self,
        command: Command,
        idempotency_key: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> CommandOutcome:
        """Runs ``command``; raises a ``DomainError`` if it is refused, with nothing written.

        Cancelling the caller does not cancel a command already queued: like a
        transaction already sent, it runs (and an idempotency key keeps a retry safe).
        """
        _check_input(command, idempotency_key)
        handler = self.handlers[type(command)]
        if not self.group_commit:
            return await self._execute_alone(command, handler, idempotency_key, metadata)
        future: asyncio.Future[CommandOutcome] = asyncio.get_running_loop().create_future()
        # A caller that was cancelled never reads its answer; that is not an error to log.
        future.add_done_callback(_consume)
        self._pending.append(_Request(command, handler, idempotency_key, metadata, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending(), name="command writer")
        return await asyncio.shield(future)

    async def _write_pending(self) -> None:
        """Writes queued commands group by group until none are left, then ends."""
        while self._pending:
            group = self._pending[: self.max_group]
            del self._pending[: len(group)]
            try:
                await self._write_group(group)
            except BaseException as error:  # never leave a caller waiting
                for request in group:
                    _answer(request, error)
                if not isinstance(error, Exception):
                    raise

    async def _write_group(self, group: list[_Request]) -> None:
        if len(group) == 1:
            await self._settle(group[0])
            return
        try:
            results, written = await self._transactions.run(lambda uow: self._run_group(uow, group))
        except Exception as error:  # a write undone, a lost race, a fault: one by one
            log.info("a group of %d commands runs again one by one (%r)", len(group), error)
            for request in group:
                await self._settle(request)
            return
        self._notify(written)
        for request, result in results:
            _answer(request, result)

    async def _run_group(
        self, uow: UnitOfWork, group: list[_Request]
    ) -> tuple[list[tuple[_Request, CommandOutcome | DomainError]], int | None]:
        """Runs the group's commands one after another in ``uow``'s transaction."""
        results: list[tuple[_Request, CommandOutcome | DomainError]] = []
        written: int | None = None
        for request in group:
            uow.next_command(request.metadata)
            try:
                outcome, position = await self._run(
                    request.command, request.handler, request.key, uow
                )
            except DomainError as error:
                if uow.wrote:
                    raise _BatchAborted from error
                results.append((request, error))
                continue
            results.append((request, outcome))
            written = position if position is not None else written
        return results, written

    async def _settle(self, request: _Request) -> None:
        """Runs one queued command in its own transaction and answers its caller."""
        try:
            outcome = await self._execute_alone(
                request.command, request.handler, request.key, request.metadata
            )
        except Exception as error:
            _answer(request, error)
        else:
            _answer(request, outcome)

    async def _execute_alone(
        self,
        command: Command,
        handler: Handler,
        key: str | None,
        metadata: dict[str, Any] | None,
    ) -> CommandOutcome:
        """One command in its own transaction, run again if it lost a race."""

        async def work(uow: UnitOfWork) -> tuple[CommandOutcome, int | None]:
            uow.next_command(metadata)
            return await self._run(command, handler, key, uow)

        for attempt in range(1, ATTEMPTS + 1):
            try:
                outcome, written = await self._transactions.run(work)
            except IntegrityError:
                if attempt == ATTEMPTS:
                    raise
                log.info("command %s lost a race, running it again", type(command).__name__)
            else:
                self._notify(written)
                return outcome
        raise AssertionError("unreachable")

    async def _run(
        self, command: Command, handler: Handler, key: str | None, uow: UnitOfWork
    ) -> tuple[CommandOutcome, int | None]:
        """The command in ``uow``'s transaction: its outcome and its last event's position."""
        request_hash = idempotency.fingerprint(command) if key is not None else ""
        uow.metadata["command"] = type(command).__name__
        if key is not None:
            uow.metadata["idempotencyKey"] = key
            stored = await idempotency.find(uow.conn, key)
            if stored is not None:
                if stored.request_hash != request_hash:
                    raise IdempotencyKeyReused(
                        "this idempotencyKey was used for a different command",
                        "idempotencyKey",
                    )
                return stored.outcome, None
        aggregate = await handler(command, uow)
        written = await uow.flush()
        position = written if written is not None else await uow.head()
        outcome = CommandOutcome(aggregate.id, position, aggregate.version)
        if key is not None:
            await idempotency.remember(uow.conn, key, command, request_hash, outcome, uow.now)
        return outcome, written

    def _notify(self, written: int | None) -> None:
        if written is not None:
            for listener in self._listeners:
                listener(written)
