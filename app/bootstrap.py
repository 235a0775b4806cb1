"""The one wiring point: builds the stores, the command bus and the relay once per process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.admin import ProjectionAdmin
from app.auth import JwtAuthenticator, authenticator
from app.bus_metrics import BUS_METRICS
from app.ferretdb import (
    EmbeddedFerretDB,
    ReadStoreUnavailable,
    ensure_binary,
    index_document_ids,
    prepare_rebuild,
)
from app.settings import Role, Settings
from domain import idempotency
from domain.bus import CommandBus
from domain.store import check_schema, create_engine, create_schema
from projections.cache import ReadCache
from projections.feeds import Feeds
from projections.lease import Lease
from projections.progress import Progress, ProgressFollower
from projections.projection import collections_of
from projections.readdb import ReadDatabase
from projections.registry import all_projections
from projections.relay import Relay, RelayOptions
from projections.signals import ProgressFeed, WriteStoreSignals

log = logging.getLogger(__name__)

# See projections.relay.Relay: FerretDB 1.24 deadlocks on 100 updates in one command,
# and its connection pool is shared with concurrent readers.
# Updates in flight hold FerretDB's pooled SQLite connections (100) until their command
# ends: 16 x 3 per relay leaves room for a rebuild's relay beside the live one, and
# for reads.
FERRETDB_WRITE_CHUNK = 16
FERRETDB_CONCURRENT_WRITES = 3
FERRETDB_MAX_POOL = 32
MONGODB_WRITE_CHUNK = 1000


@dataclass(frozen=True)
class ReadStore:
    client: AsyncMongoClient[dict[str, Any]]
    is_ferretdb: bool
    backend: str | None = None
    """FerretDB's backend, ``sqlite`` or ``postgresql`` (None: MongoDB)."""

    @property
    def write_chunk(self) -> int:
        return FERRETDB_WRITE_CHUNK if self.is_ferretdb else MONGODB_WRITE_CHUNK

    @property
    def concurrent_writes(self) -> int | None:
        """Bulk writes a relay may have in flight; None: no limit."""
        return FERRETDB_CONCURRENT_WRITES if self.is_ferretdb else None

    @property
    def check_versions(self) -> bool:
        """Whether the relay decides version guards itself: only FerretDB on SQLite needs
        it, whose guarded filters scan the collection (see ``projections.relay._checked``);
        on PostgreSQL FerretDB uses the filter, as MongoDB does."""
        return self.is_ferretdb and self.backend != "postgresql"

    @property
    def relay_options(self) -> RelayOptions:
        """How a relay (live or rebuilding) writes here; FerretDB gets its workarounds."""
        return RelayOptions(
            write_chunk=self.write_chunk,
            check_versions=self.check_versions,
            concurrent_writes=self.concurrent_writes,
        )


async def connect_read_store(
    url: str, server_timeout: float = 30.0, database: str = "shop"
) -> ReadStore:
    """A client sized for the server behind ``url``: FerretDB (found by its buildInfo,
    however it was started) gets a smaller pool, and the relay smaller bulk writes.

    ``server_timeout``: seconds an operation waits for an unreachable server before failing.
    """
    options: dict[str, Any] = {
        "tz_aware": True,
        "serverSelectionTimeoutMS": int(server_timeout * 1000),
        "connectTimeoutMS": int(min(server_timeout, 10.0) * 1000),
    }
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, **options)
    try:
        info = await client.admin.command("buildInfo")
    except BaseException:
        await client.close()
        raise
    if "ferretdbVersion" not in info:
        return ReadStore(client, is_ferretdb=False)
    await client.close()
    sized: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        url, maxPoolSize=FERRETDB_MAX_POOL, **options
    )
    try:
        backend = await ferretdb_backend(sized[database])
    except BaseException:
        await sized.close()
        raise
    return ReadStore(sized, is_ferretdb=True, backend=backend)


PROBE = "shop_backend_probe"


async def ferretdb_backend(db: AsyncDatabase[dict[str, Any]]) -> str:
    """Which backend a FerretDB stores in, from its query plan (nothing else tells):
    SQLite's plan is a list of ``id=… detail=…`` lines, PostgreSQL's a JSON plan."""
    with contextlib.suppress(DuplicateKeyError):
        await db[PROBE].insert_one({"_id": 1})
    plan = (await db.command("explain", {"find": PROBE, "filter": {"_id": 1}})).get(
        "queryPlanner", {}
    )
    return "postgresql" if isinstance(plan.get("Plan"), dict) else "sqlite"


@dataclass
class Services:
    """What requests need, built once at start and handed on as lifespan state."""

    settings: Settings
    role: Role
    engine: AsyncEngine
    mongo: AsyncMongoClient[dict[str, Any]]
    db: AsyncDatabase[dict[str, Any]]
    bus: CommandBus
    progress: Progress
    feeds: Feeds
    relay: Relay | None = None
    follower: ProgressFollower | None = None
    # Verifies callers' tokens (app.auth); None in a relay-only process.
    auth: JwtAuthenticator | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # How this process's relays write to the read store (a rebuild's relay too).
    relay_options: RelayOptions = field(
        default_factory=lambda: RelayOptions(
            write_chunk=1000, check_versions=False, concurrent_writes=None
        )
    )
    # Rebuilds an admin started here (app.admin); cancelled at shutdown.
    admin_tasks: set[asyncio.Task[None]] = field(default_factory=set)
    admin: ProjectionAdmin | None = None

    def background_failed(self) -> bool:
        return any(task.done() for task in self.tasks)


@contextlib.asynccontextmanager
async def bootstrap(settings: Settings, role: Role = Role.ALL) -> AsyncIterator[Services]:
    """Starts everything this process's role needs and stops it all on exit, also on error."""
    async with contextlib.AsyncExitStack() as stack:
        settings.shop_data_dir.mkdir(parents=True, exist_ok=True)
        auth = None if role is Role.RELAY else authenticator(settings)
        mongo_url = settings.mongodb_url
        ferretdb: EmbeddedFerretDB | None = None
        embedded_dir = settings.shop_data_dir / "ferretdb"
        if mongo_url is None:
            if role is not Role.ALL:
                raise ReadStoreUnavailable(
                    f"role {role} shares the read store with other processes: set MONGODB_URL"
                )
            binary = await asyncio.to_thread(ensure_binary, settings.cache_dir)
            ferretdb = EmbeddedFerretDB(binary, embedded_dir)
            stack.callback(ferretdb.stop)
            ferretdb.launch()  # in this thread, which the child must not outlive
            mongo_url = await asyncio.to_thread(ferretdb.wait_until_ready)

        engine = create_engine(settings.write_store_url)
        stack.push_async_callback(_within, 1.0, "closing the write store's pool", engine.dispose)
        await _prepare_write_store(engine, settings)

        read_store = await connect_read_store(
            mongo_url, settings.shop_read_store_timeout, settings.mongodb_database
        )
        mongo = read_store.client
        stack.push_async_callback(_within, 1.0, "closing the read store's client", mongo.close)
        cache = ReadCache(
            settings.shop_read_cache_bytes,
            {p.name: collections_of(p) for p in all_projections()},
        )
        db = ReadDatabase(mongo[settings.mongodb_database], cache)

        services = Services(
            settings=settings,
            role=role,
            engine=engine,
            mongo=mongo,
            db=db,
            bus=CommandBus(engine, observer=BUS_METRICS),
            progress=(progress := Progress(cache)),
            feeds=Feeds(progress),
            auth=auth,
            relay_options=read_store.relay_options,
        )
        stack.callback(services.bus.close)
        # Background work (the relay releasing its lease, say) gets a bounded time to stop.
        stopping = 0.3 * settings.shop_shutdown_grace
        stack.push_async_callback(_within, stopping, "stopping background tasks", _cancel,
                                  services.tasks)  # fmt: skip
        stack.push_async_callback(_within, stopping, "stopping rebuilds", _cancel_all,
                                  services.admin_tasks)  # fmt: skip
        feed = ProgressFeed(engine)
        if role in (Role.ALL, Role.RELAY):
            relay = Relay(
                engine,
                db,
                all_projections(),
                services.progress,
                batch_size=settings.shop_relay_batch_size,
                poll_interval=settings.shop_relay_poll_interval,
                # The embedded read store serves this process alone: nobody else follows.
                feed=feed if ferretdb is None else None,
                lease=Lease(engine, db, ttl=settings.shop_relay_lease_ttl),
                **read_store.relay_options,
            )
            await relay.setup()
            services.relay = relay
            services.bus.on_commit(relay.wake)
            _spawn(services.tasks, relay.run(), "relay")
        services.admin = ProjectionAdmin(
            engine, mongo[settings.mongodb_database], db,
            relay=services.relay, relay_options=services.relay_options,
            prepared=prepare_rebuild(settings), tasks=services.admin_tasks,
        )  # fmt: skip
        # Progress comes from the local relay while it holds the lease; otherwise (api role,
        # or a standby relay) from the feed another process's relay publishes.
        local = services.relay
        follower = ProgressFollower(db, services.progress, feed, needed=lambda: not _applies(local))
        services.follower = follower
        await follower.start()
        _spawn(services.tasks, follower.run(), "progress follower")
        # Commits and progress of other processes, through the write store.
        signals = WriteStoreSignals(
            engine, on_outbox=local.wake if local is not None else _ignore,
            on_progress=follower.signal,
            on_resume=local.retry_now if local is not None else None,
        )  # fmt: skip
        _spawn(services.tasks, signals.run(), "write store signals")
        if role in (Role.ALL, Role.RELAY) and settings.shop_idempotency_key_days > 0:
            keep = timedelta(days=settings.shop_idempotency_key_days)
            _spawn(services.tasks, purge_idempotency_keys(engine, keep), "idempotency key purge")
        if ferretdb is not None:
            _spawn(
                services.tasks,
                ferretdb.supervise(on_restart=lambda: _read_store_back(services)),
                "read store supervisor",
            )
            await asyncio.to_thread(index_document_ids, embedded_dir)
            _spawn(services.tasks, _keep_ids_indexed(embedded_dir), "ferretdb id indexes")
        log.info("shop server ready", extra={"role": str(role)})
        yield services


async def _prepare_write_store(engine: AsyncEngine, settings: Settings) -> None:
    """Migrates the write store, or with SHOP_MIGRATE_ON_START=false checks that someone
    did (``cqrs-shop migrate``)."""
    if not settings.shop_migrate_on_start:
        await check_schema(engine)
        return
    # An engine of its own, without the statement timeout (see create_schema).
    migrator = create_engine(settings.write_store_url, command_timeout=None)
    try:
        await create_schema(migrator, report=lambda line: log.info("migrations: %s", line))
    finally:
        await migrator.dispose()


PURGE_EVERY = 3600.0


async def purge_idempotency_keys(
    engine: AsyncEngine, keep: timedelta, every: float = PURGE_EVERY
) -> None:
    """Deletes idempotency keys older than ``keep``, at start and then every ``every``
    seconds, in small batches (``domain.idempotency.purge``). Any number of processes
    may do it at once; a failure is logged and tried again next time."""
    while True:
        try:
            while True:
                async with engine.begin() as conn:
                    deleted = await idempotency.purge(conn, datetime.now(UTC) - keep)
                if deleted:
                    log.info("purged %d idempotency keys older than %s", deleted, keep)
                if deleted < idempotency.PURGE_BATCH:
                    break
        except (SQLAlchemyError, OSError):
            log.warning("purging old idempotency keys failed; trying again later", exc_info=True)
        await asyncio.sleep(every)


def _applies(relay: Relay | None) -> bool:
    """Whether this process's relay applies events now (and so reports progress itself):
    it runs and its lease is surely its own."""
    return relay is not None and relay.running and relay.lease.held_for() > 0


def _ignore() -> None:
    pass


def _read_store_back(services: Services) -> None:
    """The embedded read store answers again after a restart: retry now, not after the
    back-offs its absence ran up."""
    log.warning("embedded FerretDB is back; resuming")
    if services.relay is not None:
        services.relay.retry_now()
    if services.follower is not None:
        services.follower.signal()


async def _keep_ids_indexed(data_dir: Path, interval: float = 30.0) -> None:
    """Indexes the collections created since (a rebuild's, for one); see ``index_document_ids``."""
    while True:
        await asyncio.sleep(interval)
        try:
            created = await asyncio.to_thread(index_document_ids, data_dir)
        except Exception:  # an optimisation: log it, never let it take readiness down
            log.exception("indexing FerretDB collections failed")
            continue
        if created:
            log.info("indexed _id lookups of %d new FerretDB collections", created)


def _spawn(tasks: list[asyncio.Task[None]], coro: Coroutine[Any, Any, None], name: str) -> None:
    task = asyncio.create_task(coro, name=name)
    task.add_done_callback(_log_crash)
    tasks.append(task)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped", task.get_name(), exc_info=task.exception())


async def _within(
    seconds: float, what: str, stop: Callable[..., Awaitable[Any]], *args: Any
) -> None:
    """A shutdown step that may not hang the exit (a store that does not answer)."""
    try:
        async with asyncio.timeout(seconds):
            await stop(*args)
    except TimeoutError:
        log.warning("%s took over %.1fs; going on without it", what, seconds)


async def _cancel_all(tasks: set[asyncio.Task[None]]) -> None:
    await _cancel(list(tasks))


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
