"""Idempotency keys: the first use of a key records its command and its answer.

What a key records (RULES.md: a repeat "returns the first result"): the first
command's fingerprint (its name and arguments) and its answer, a success (id,
version) or a refusal (each problem's code, message and field). A repeat with the
same arguments gets that answer again, a refusal too, even where the command would
now succeed; any other command with the key is answered ``IDEMPOTENCY_KEY_REUSED``,
which itself is never recorded. A refused command keeps nothing but its key's
record: it ran in a savepoint that was rolled back (see ``domain.uow``). Commands
refused before they reach the store (an invalid key, text no store can keep) record
nothing.

How, in the command's own transaction:

1. :func:`claim` the key before the command runs: ``INSERT ... ON CONFLICT (key) DO
   NOTHING`` with a placeholder answer. A transaction claiming a key another one
   holds (another process, the same key at the same moment) waits on the unique
   index until that one ends, so it never runs the command against the state the
   first left behind.
2. If the claim took nothing, :func:`find` the record (committed by then) and answer
   from it.
3. Once the answer is known, at the end of the transaction, :func:`record` it in the
   claimed row, before the commit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.commands import Command
from domain.errors import DomainError
from domain.model import idempotency_keys

_PENDING: dict[str, Any] = {"pending": True}
_REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """What a successful command answers: the aggregate, its version, the outbox position."""

    id: str | None
    version: int | None
    aggregate_version: int | None


Answer = CommandOutcome | DomainError


@dataclass(frozen=True, slots=True)
class Recorded:
    """A key's record: the fingerprint of the command that used it first, and its answer."""

    request_hash: str
    answer: Answer


def scoped(key: str, scope: str | None) -> str:
    """The key as stored: as given without a scope, else a hash of scope and key (which
    also keeps it within the column's 200 characters)."""
    if scope is None:
        return key
    digest = hashlib.sha256(f"{scope}\x00{key}".encode()).hexdigest()
    return f"scoped:{digest}"


def fingerprint(command: Command) -> str:
    """A stable hash of the command's name and arguments."""
    body = json.dumps(
        {"command": type(command).__name__, "arguments": asdict(command)},  # type: ignore[call-overload]
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()


def _claim_statement(insert: Any) -> sa.Insert:
    stmt: sa.Insert = insert(idempotency_keys).on_conflict_do_nothing(index_elements=["key"])
    return stmt


_CLAIM = {
    "postgresql": _claim_statement(postgresql.insert),
    "sqlite": _claim_statement(sqlite.insert),
}
_RECORD = (
    idempotency_keys.update()
    .where(idempotency_keys.c.key == sa.bindparam("claimed_key"))
    .values(result=sa.bindparam("answer", type_=idempotency_keys.c.result.type))
)


async def claim(
    conn: AsyncConnection, key: str, command: Command, request_hash: str, now: datetime
) -> bool:
    """Claims ``key`` for ``command``; whether it was free (else :func:`find` its record)."""
    row = {
        "key": key,
        "command": type(command).__name__,
        "request_hash": request_hash,
        "result": _PENDING,
        "created_at": now,
    }
    result = await conn.execute(_CLAIM[conn.dialect.name], row)
    return bool(result.rowcount == 1)


async def find(conn: AsyncConnection, key: str) -> Recorded:
    """The record of a key that :func:`claim` found taken."""
    stmt = sa.select(idempotency_keys.c.request_hash, idempotency_keys.c.result).where(
        idempotency_keys.c.key == key
    )
    row = (await conn.execute(stmt)).one()
    return Recorded(row.request_hash, _decode(key, row.result))


async def record(conn: AsyncConnection, answers: Sequence[tuple[str, Answer]]) -> None:
    """Writes each claimed key's answer, all in one statement."""
    if answers:
        await conn.execute(
            _RECORD, [{"claimed_key": key, "answer": _encode(a)} for key, a in answers]
        )


def _encode(answer: Answer) -> dict[str, Any]:
    if isinstance(answer, DomainError):
        return {_REFUSED: answer.to_data()}
    return asdict(answer)


def _decode(key: str, result: dict[str, Any]) -> Answer:
    if _REFUSED in result:
        return DomainError.from_data(result[_REFUSED])
    if result.get("pending"):
        # Claims are answered before their transaction commits; another transaction
        # only ever sees a finished record.
        raise RuntimeError(f"the record of idempotency key {key!r} has no answer")
    return CommandOutcome(**result)


PURGE_BATCH = 1000


async def purge(conn: AsyncConnection, older_than: datetime) -> int:
    """Deletes up to PURGE_BATCH keys recorded before ``older_than``; how many it deleted.

    A retry with a purged key runs its command again: keys are kept long enough that
    no client retries that late (``SHOP_IDEMPOTENCY_KEY_DAYS``). Small batches, each
    its own transaction, so a purge never holds the write lock for long.
    """
    table = idempotency_keys
    old = sa.select(table.c.key).where(table.c.created_at < older_than).limit(PURGE_BATCH)
    result = await conn.execute(sa.delete(table).where(table.c.key.in_(old.scalar_subquery())))
    return int(result.rowcount or 0)
