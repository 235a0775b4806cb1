"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio
import contextlib

import sqlalchemy as sa
from pymongo.errors import PyMongoError
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import JSONResponse

from app.bootstrap import Services
from projections import lease

PROBE_TIMEOUT = 2.0


async def healthz(_: Request) -> JSONResponse:
    """The process is alive and serving HTTP."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """200 only when the write store, the read store and a relay are all up."""
    services: Services = request.state.services
    checks = {
        "writeStore": await _probe(_write_store(services)),
        "readStore": await _probe(_read_store(services)),
        "relay": await _probe(_relay(services)),
    }
    ready = all(checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )


async def _probe(check: asyncio.Future[bool] | asyncio.Task[bool] | object) -> bool:
    with contextlib.suppress(SQLAlchemyError, PyMongoError, OSError, TimeoutError):
        return bool(await asyncio.wait_for(check, PROBE_TIMEOUT))  # type: ignore[arg-type]
    return False


async def _write_store(services: Services) -> bool:
    async with services.engine.connect() as conn:
        value: object = await conn.scalar(sa.text("SELECT 1"))
        return value == 1


async def _read_store(services: Services) -> bool:
    reply = await services.mongo.admin.command("ping")
    return bool(reply.get("ok"))


async def _relay(services: Services) -> bool:
    """Some relay applies events: this process's, or the lease holder elsewhere."""
    if services.background_failed():
        return False
    if services.relay is not None and services.relay.running:
        return True
    return await lease.holder_alive(services.db)
