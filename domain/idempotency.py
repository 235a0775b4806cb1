"""Idempotency keys, stored in the same transaction as the command's state and events."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.commands import Command
from domain.model import idempotency_keys


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """What a successful command answers: the aggregate, its version, the outbox position."""

    id: str | None
    version: int | None
    aggregate_version: int | None


@dataclass(frozen=True, slots=True)
class StoredOutcome:
    request_hash: str
    outcome: CommandOutcome


def fingerprint(command: Command) -> str:
    """A stable hash of the command's name and arguments."""
    body = json.dumps(
        {"command": type(command).__name__, "arguments": asdict(command)},  # type: ignore[call-overload]
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()


async def find(conn: AsyncConnection, key: str) -> StoredOutcome | None:
    stmt = sa.select(idempotency_keys.c.request_hash, idempotency_keys.c.result).where(
        idempotency_keys.c.key == key
    )
    row = (await conn.execute(stmt)).first()
    if row is None:
        return None
    result: dict[str, Any] = row.result
    return StoredOutcome(row.request_hash, CommandOutcome(**result))


async def remember(
    conn: AsyncConnection,
    key: str,
    command: Command,
    request_hash: str,
    outcome: CommandOutcome,
    now: datetime,
) -> None:
    await conn.execute(
        idempotency_keys.insert().values(
            key=key,
            command=type(command).__name__,
            request_hash=request_hash,
            result=asdict(outcome),
            created_at=now,
        )
    )
