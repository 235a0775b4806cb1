"""The command bus: runs commands in units of work, with idempotency keys."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from opentelemetry import trace
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from domain import idempotency, tracing, validation
from domain.commands import Command
from domain.errors import (
    CommitOutcomeUnknown,
    DomainError,
    IdempotencyKeyReused,
    Problems,
    StoreUnavailable,
    ValidationFailed,
    unreachable,
)
from domain.handlers import Handler, UnhandledCommand, every_handler
from domain.idempotency import Answer, CommandOutcome
from domain.uow import UnitOfWork, utcnow
from domain.writer import NotCommitted, Transactions

log = logging.getLogger(__name__)

MAX_IDEMPOTENCY_KEY_LENGTH = 200
# A transaction that failed before it committed is run again, up to this many times in
# all: a unique constraint can fire when two transactions race past the same check
# (two products with one SKU on PostgreSQL; running again sees the winner and answers
# as if it came second), PostgreSQL can end one of two transactions that wait for
# each other (deadlock) or cannot be serialised, and a COMMIT can fail (NotCommitted).
# A failure this quick that says the store is unreachable is a pooled connection the
# store dropped (it restarted): the next attempt gets a fresh one. A slower one is the
# store itself: the command answers UNAVAILABLE at once (within CONNECT_TIMEOUT).
STALE_CONNECTION_SECONDS = 0.25
ATTEMPTS = 5
# SQLSTATEs of a transaction the database ended so that others can go on.
_RUN_AGAIN_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock, serialization failure


class BusObserver(Protocol):
    """What the bus tells whoever measures it (``app.bus_metrics``); it measures nothing
    itself."""

    def answered(self, command: str, outcome: str, seconds: float) -> None:
        """A command was answered after ``seconds``: ``outcome`` is accepted, rejected (a
        DomainError), failed or cancelled."""

    def grouped(self, size: int) -> None:
        """``size`` commands are written together in one transaction (group commit)."""


class _Unobserved:
    def answered(self, command: str, outcome: str, seconds: float) -> None:
        pass

    def grouped(self, size: int) -> None:
        pass


UNOBSERVED: BusObserver = _Unobserved()


class _Guarded:
    """An observer whose failures are logged, never raised: a command's answer and the
    writer that answers every queued caller must not depend on what measures them."""

    def __init__(self, observer: BusObserver) -> None:
        self.observer = observer

    def answered(self, command: str, outcome: str, seconds: float) -> None:
        try:
            self.observer.answered(command, outcome, seconds)
        except Exception:
            log.exception("the bus observer failed on an answer (%s, %s)", command, outcome)

    def grouped(self, size: int) -> None:
        try:
            self.observer.grouped(size)
        except Exception:
            log.exception("the bus observer failed on a group of %d", size)


def _transaction_span(group: list[_Request]) -> AbstractContextManager[trace.Span | None]:
    """The span of a group's transaction: a child of its first command's span, linking
    the others' (each command's trace shows where it was written)."""
    if not tracing.enabled():
        return contextlib.nullcontext()
    first = group[0].span
    parent = trace.set_span_in_context(trace.NonRecordingSpan(first)) if first.is_valid else None
    return tracing.span(
        "transaction",
        context=parent,
        links=tracing.links_to(r.span for r in group[1:]),
        attributes={"cqrs_shop.commands": len(group)},
    )


@dataclass(eq=False)
class _Request:
    command: Command
    handler: Handler
    key: str | None
    metadata: dict[str, Any] | None
    scope: str | None = None
    future: asyncio.Future[CommandOutcome] | None = None
    span: trace.SpanContext = trace.INVALID_SPAN_CONTEXT
    """The caller's command span, for its transaction's (domain.tracing)."""


@dataclass(frozen=True, slots=True)
class _Ran:
    """A command that ran in this transaction; its outcome waits for the positions."""

    id: str
    aggregate_version: int
    last_event: int | None  # index in the transaction's events, None for a no-op


@dataclass(frozen=True, slots=True)
class _SameAs:
    """The same key and command as an earlier one in this transaction: its answer."""

    index: int


_Step = _Ran | _SameAs | Answer


def _answer(request: _Request, result: CommandOutcome | BaseException) -> None:
    """Gives the caller its outcome or error, unless it has one already."""
    future = request.future
    assert future is not None
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _consume(future: asyncio.Future[CommandOutcome]) -> None:
    if not future.cancelled():
        future.exception()


def _may_run_again(error: Exception) -> bool:
    """Whether ``error`` ended a transaction that took no effect and may just be run again."""
    if isinstance(error, NotCommitted | IntegrityError):
        return True
    if isinstance(error, DBAPIError):
        # asyncpg and psycopg name it sqlstate, psycopg2 pgcode.
        code = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
        return code in _RUN_AGAIN_SQLSTATES
    return False


def _unavailable(error: Exception) -> StoreUnavailable:
    unavailable = StoreUnavailable(
        "the write store cannot be reached; nothing was written: try again shortly"
    )
    unavailable.__cause__ = error
    return unavailable


def _no_op_first(steps: Sequence[_Step]) -> bool:
    """Whether a command that wrote no event comes before every one that did: its
    version is then the last position before the transaction's own."""
    for step in steps:
        if isinstance(step, _Ran):
            return step.last_event is None
    return False


def _reused() -> IdempotencyKeyReused:
    return IdempotencyKeyReused(
        "this idempotencyKey was used for a different command", "idempotencyKey"
    )


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


class CommandBus:
    """Dispatches commands to their handlers and tells listeners of every commit.

    With ``group_commit`` (the default), commands that arrive while a transaction is
    being written wait and then run together in the next one, in arrival order, each
    seeing the ones before it: the same result as running them one after another,
    for the price of one commit. A refused command answers its error and keeps
    nothing it wrote (it ran in a savepoint), and the group goes on.

    A transaction that fails before its commit (a deadlock, a lost race) took no
    effect: a group then runs again one command per transaction, and a command alone
    runs again (:data:`ATTEMPTS`). A failed COMMIT may have taken effect: it is run
    again only once the store says it did not; if it did, every caller gets its
    answer; if that cannot be found out, each gets :class:`CommitOutcomeUnknown`.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        handlers: Mapping[type[Command], Handler] | None = None,
        clock: Callable[[], datetime] = utcnow,
        *,
        group_commit: bool = True,
        max_group: int = 64,
        observer: BusObserver = UNOBSERVED,
    ) -> None:
        self.engine = engine
        self.observer: BusObserver = _Guarded(observer)
        # Every command's handler unless told otherwise (tests swap one).
        self.handlers = every_handler() if handlers is None else handlers
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
        idempotency_scope: str | None = None,
    ) -> CommandOutcome:
        """Runs ``command``; raises a ``DomainError`` if it is refused, with nothing written
        but the refusal, recorded under ``idempotency_key`` (see ``domain.idempotency``).

        Cancelling the caller does not cancel a command already queued: like a
        transaction already sent, it runs (and an idempotency key keeps a retry safe).

        ``idempotency_scope`` (the caller's identity) keeps callers' keys apart: the
        same key from another caller is another key.
        """
        began, outcome = time.perf_counter(), "failed"
        name = type(command).__name__
        try:
            with tracing.span(f"command {name}"):
                if traced := tracing.context_metadata():
                    metadata = {**(metadata or {}), **traced}
                answer = await self._execute(command, idempotency_key, metadata, idempotency_scope)
            outcome = "accepted"
            return answer
        except DomainError:
            outcome = "rejected"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self.observer.answered(name, outcome, time.perf_counter() - began)

    async def _execute(
        self,
        command: Command,
        idempotency_key: str | None,
        metadata: dict[str, Any] | None,
        idempotency_scope: str | None,
    ) -> CommandOutcome:
        _check_input(command, idempotency_key)
        handler = self.handlers.get(type(command))
        if handler is None:
            raise UnhandledCommand(type(command))
        request = _Request(command, handler, idempotency_key, metadata, idempotency_scope)
        request.span = trace.get_current_span().get_span_context()
        if not self.group_commit:
            with _transaction_span([request]):
                return await self._execute_alone(request)
        future: asyncio.Future[CommandOutcome] = asyncio.get_running_loop().create_future()
        # A caller that was cancelled never reads its answer; that is not an error to log.
        future.add_done_callback(_consume)
        request.future = future
        self._pending.append(request)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending(), name="command writer")
        return await asyncio.shield(future)

    async def _write_pending(self) -> None:
        """Writes queued commands group by group until none are left, then ends."""
        while self._pending:
            group = self._pending[: self.max_group]
            del self._pending[: len(group)]
            self.observer.grouped(len(group))
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
        began = time.monotonic()
        try:
            with _transaction_span(group):
                answers, written = await self._transactions.run(lambda uow: self._run(uow, group))
        except CommitOutcomeUnknown as error:
            for request in group:
                _answer(request, error)
            return
        except Exception as error:
            if unreachable(error) and time.monotonic() - began > STALE_CONNECTION_SECONDS:
                # The store is down, not just a pooled connection it dropped: the whole
                # group answers at once rather than one command at a time, each waiting.
                unavailable = _unavailable(error)
                for request in group:
                    _answer(request, unavailable)
                return
            # It took no effect: one by one, each with its retries.
            log.info("a group of %d commands runs again one by one (%r)", len(group), error)
            for request in group:
                await self._settle(request)
            return
        self._notify(written)
        for request, answer in zip(group, answers, strict=True):
            _answer(request, answer)

    async def _settle(self, request: _Request) -> None:
        """Runs one queued command in its own transaction and answers its caller."""
        try:
            with _transaction_span([request]):
                outcome = await self._execute_alone(request)
        except Exception as error:
            _answer(request, error)
        else:
            _answer(request, outcome)

    async def _execute_alone(self, request: _Request) -> CommandOutcome:
        """One command in its own transaction, run again while that may help."""
        began = time.monotonic()
        for attempt in range(1, ATTEMPTS + 1):
            try:
                answers, written = await self._transactions.run(
                    lambda uow: self._run(uow, [request])
                )
            except CommitOutcomeUnknown:
                raise
            except Exception as error:
                if unreachable(error):
                    if attempt == 1 and time.monotonic() - began < STALE_CONNECTION_SECONDS:
                        continue  # a pooled connection the store dropped: once more, at once
                    raise _unavailable(error) from error
                if attempt == ATTEMPTS or not _may_run_again(error):
                    raise
                log.info("command %s runs again (%r)", type(request.command).__name__, error)
            else:
                self._notify(written)
                [answer] = answers
                if isinstance(answer, DomainError):
                    raise answer
                return answer
        raise AssertionError("unreachable")

    async def _run(
        self, uow: UnitOfWork, requests: Sequence[_Request]
    ) -> tuple[list[Answer], int | None]:
        """Runs ``requests`` one after another in ``uow``'s transaction, then appends all
        their events and records their keys' answers: each one's answer, and the last
        position written."""
        claimed: dict[str, tuple[int, str]] = {}
        steps = [await self._step(uow, r, i, claimed) for i, r in enumerate(requests)]
        positions, head = await uow.append_events(read_head=_no_op_first(steps))
        answers: list[Answer] = []
        last: int | None = head
        for step in steps:
            if isinstance(step, _Ran):
                if step.last_event is not None:
                    last = positions[step.last_event]
                answers.append(CommandOutcome(step.id, last, step.aggregate_version))
            elif isinstance(step, _SameAs):
                answers.append(answers[step.index])
            else:
                answers.append(step)
        await idempotency.record(uow.conn, [(key, answers[i]) for key, (i, _) in claimed.items()])
        return answers, positions[-1] if positions else None

    async def _step(
        self,
        uow: UnitOfWork,
        request: _Request,
        index: int,
        claimed: dict[str, tuple[int, str]],
    ) -> _Step:
        """One command of the transaction: its key claimed first, then run in its own
        savepoint; what it answers, or what its answer waits for."""
        command, key = request.command, request.key
        uow.next_command(request.metadata)
        uow.metadata["command"] = type(command).__name__
        if key is not None:
            uow.metadata["idempotencyKey"] = key
            key = idempotency.scoped(key, request.scope)
            request_hash = idempotency.fingerprint(command)
            if key in claimed:  # claimed earlier in this transaction
                first, first_hash = claimed[key]
                return _SameAs(first) if first_hash == request_hash else _reused()
            if not await idempotency.claim(uow.conn, key, command, request_hash, uow.now):
                recorded = await idempotency.find(uow.conn, key)
                return recorded.answer if recorded.request_hash == request_hash else _reused()
            claimed[key] = (index, request_hash)
        try:
            aggregate = await request.handler(command, uow)
            last_event = await uow.flush()
        except DomainError as refusal:
            await uow.end_command(refused=True)
            return refusal
        await uow.end_command(refused=False)
        return _Ran(aggregate.id, aggregate.version, last_event)

    def _notify(self, written: int | None) -> None:
        if written is None:
            return
        for listener in self._listeners:
            try:
                listener(written)
            except Exception:  # the commands committed: their callers get their answers
                log.exception("a commit listener failed at position %d", written)
