"""The ``cqrs-shop`` command."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
import uvicorn
from pymongo.errors import PyMongoError
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from app import logging as shop_logging
from app.bootstrap import ReadStore, connect_read_store
from app.ferretdb import (
    EmbeddedFerretDB,
    ReadStoreUnavailable,
    ensure_binary,
    prepare_rebuild,
    running_url,
)
from app.http import HttpLimits, MetricsListener, limited_protocol, raise_open_files_limit
from app.settings import Role, Settings
from domain import migrations
from domain.bus import CommandBus
from domain.migrations import SchemaError
from domain.store import check_schema, create_engine, create_schema
from projections.inmemory import UnsupportedWrite
from projections.projection import Projection
from projections.rebuild import GRACE, RebuildRunning, rebuild
from projections.registry import projection_names, select
from projections.verify import Difference, Verification, VerifyFailed, verify

cli = typer.Typer(help="A CQRS GraphQL shop server.", no_args_is_help=True)


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    role: Annotated[Role, typer.Option(help="all: api and relay; api; relay.")] = Role.ALL,
) -> None:
    """Runs the server; GraphiQL at http://HOST:PORT/graphql."""
    from app.asgi import create_app

    settings = Settings()
    shop_logging.configure(settings.log_level, settings.log_format)
    if settings.mongodb_url is None:
        if role is not Role.ALL:
            typer.echo(f"role {role} shares the read store with other processes: set MONGODB_URL")
            raise typer.Exit(code=2)
        _ensure_read_store(settings)
    raise_open_files_limit(settings.shop_max_connections)
    config = uvicorn_config(create_app(settings, role), host, port, settings)
    metrics = None
    if settings.shop_metrics_port is not None:
        from app.asgi import create_metrics_app

        metrics_config = uvicorn_config(
            create_metrics_app(), host, settings.shop_metrics_port, settings
        )
        metrics = MetricsListener(metrics_config)
    server = BoundedServer(config, settings.shop_shutdown_grace, metrics)
    server.run()
    if not server.started:
        raise typer.Exit(code=3)


class BoundedServer(uvicorn.Server):
    """uvicorn, ending within ``grace`` seconds of the first SIGTERM or SIGINT.

    Requests in flight get half the grace to finish (then they are cancelled, so their
    transactions roll back), the app's shutdown most of the rest (see
    ``app.bootstrap``); a watchdog thread ends the process at the deadline if
    something still hangs. ``metrics``: the listener serving ``/metrics`` on its own port,
    opened before the app starts (a port in use fails the start) and closed first.
    """

    def __init__(
        self, config: uvicorn.Config, grace: float, metrics: MetricsListener | None = None
    ) -> None:
        config.timeout_graceful_shutdown = max(int(grace / 2), 1)
        super().__init__(config)
        self.grace = grace
        self.metrics = metrics
        self._watchdog: threading.Timer | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if self.metrics is not None:
            try:
                await self.metrics.bind(self.lifespan.state)
            except OSError as error:
                logging.getLogger(__name__).error("SHOP_METRICS_PORT: %s", error)
                self.should_exit = True  # not started: serve exits 3
                return
        await super().startup(sockets)
        if self.started and self.metrics is not None:
            await self.metrics.start_serving()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.metrics is not None:
            self.metrics.close()
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Timer(self.grace, self._exit_now)
            self._watchdog.daemon = True
            self._watchdog.start()
        super().handle_exit(sig, frame)

    def _exit_now(self) -> None:
        logging.getLogger(__name__).error(
            "shutdown took longer than SHOP_SHUTDOWN_GRACE (%.1fs); exiting now", self.grace
        )
        os._exit(1)  # the embedded FerretDB follows: it dies with this process


def uvicorn_config(app: Any, host: str, port: int, settings: Settings) -> uvicorn.Config:
    """How the server runs its ASGI app (the benchmark's server runs the same): uvicorn on
    httptools with the HTTP limits of ``app.http`` in front of the app."""
    return uvicorn.Config(
        app, host=host, port=port, log_config=None, lifespan="on",
        http=limited_protocol(HttpLimits.of(settings)),
        timeout_keep_alive=settings.shop_http_keep_alive,
        ws="websockets-sansio",
        # The app closes a socket past SHOP_MAX_WS_MESSAGE_BYTES with a reason naming it;
        # uvicorn stops reading far larger frames before they are buffered whole.
        ws_max_size=2 * settings.shop_max_ws_message_bytes,
        # A client's address (which the per-client limits key on) comes from
        # X-Forwarded-For only when the peer is a proxy named here; by default none is.
        proxy_headers=bool(settings.shop_forwarded_allow_ips),
        forwarded_allow_ips=settings.shop_forwarded_allow_ips or [],
    )  # fmt: skip


@cli.command()
def token(
    admin: Annotated[bool, typer.Option("--admin", help="A token with the admin role.")] = False,
    customer: Annotated[
        str | None, typer.Option(help="A token for this customer id (the customer role).")
    ] = None,
    ttl: Annotated[int, typer.Option(min=1, help="Seconds until it expires.")] = 3600,
    subject: Annotated[str, typer.Option(help="The admin token's subject (sub).")] = "admin",
) -> None:
    """Prints a token signed with the server's secret, alone on the last line.

    For development, scripts and GraphiQL (Headers: {"Authorization": "Bearer <token>"}).
    """
    from app.auth import mint, signing_secret
    from domain.identity import ADMIN_ROLE, CUSTOMER_ROLE

    if admin == (customer is not None):
        typer.echo("give exactly one of --admin and --customer ID", err=True)
        raise typer.Exit(code=2)
    settings = Settings()
    secret = signing_secret(settings)
    if secret is None:
        typer.echo(
            "tokens come from your identity provider (SHOP_AUTH_JWKS_URL is set); "
            "set SHOP_AUTH_SECRET as well to sign development tokens here",
            err=True,
        )
        raise typer.Exit(code=2)
    sub, roles = (subject, [ADMIN_ROLE]) if customer is None else (customer, [CUSTOMER_ROLE])
    issued = mint(
        secret, sub, roles, ttl,
        issuer=settings.shop_auth_issuer, audience=settings.shop_auth_audience,
    )  # fmt: skip
    typer.echo(
        f"# {roles[0]} token for sub {sub!r}, valid {ttl} s; "
        "send it as the header Authorization: Bearer <token>",
        err=True,
    )
    typer.echo(issued)


@cli.command("install-read-store")
def install_read_store() -> None:
    """Builds the embedded FerretDB into the cache, if it is not there yet."""
    settings = Settings()
    shop_logging.configure(settings.log_level, settings.log_format)
    typer.echo(f"FerretDB ready at {_ensure_read_store(settings)}")


def _ensure_read_store(settings: Settings) -> Path:
    try:
        return ensure_binary(settings.cache_dir, report=typer.echo)
    except ReadStoreUnavailable as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(code=1) from error


@cli.command("print-schema")
def print_schema(
    output: Annotated[Path | None, typer.Option(help="Write to this file.")] = None,
) -> None:
    """Prints the GraphQL schema this server serves."""
    from schema.build import print_schema as render

    text = render()
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)


@cli.command("seed")
def seed_command(
    products: Annotated[int, typer.Option(min=0, help="Products to create.")] = 50,
    customers: Annotated[int, typer.Option(min=0, help="Customers to register.")] = 100,
    orders: Annotated[int, typer.Option(min=0, help="Orders to place.")] = 300,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed, the same shop.")] = 42,
) -> None:
    """Fills the shop with demo data through the real command handlers.

    Writes to the write store only; a running server's relay (or the next start)
    brings it to the read models.
    """
    from app.seed import seed as run_seed

    settings = Settings()
    shop_logging.configure("WARNING", settings.log_format)

    async def go() -> None:
        engine = create_engine(settings.write_store_url)
        bus = CommandBus(engine)
        try:
            await create_schema(engine)
            with _progress() as progress:
                task = progress.add_task("seeding", total=products + customers + orders)
                counts = await run_seed(
                    bus, products=products, customers=customers, orders=orders,
                    seed=seed, step=lambda: progress.advance(task),
                )  # fmt: skip
        finally:
            bus.close()
            await engine.dispose()
        typer.echo(
            f"created {counts.products} products, {counts.customers} customers, "
            f"{counts.orders} orders ({counts.shipped} shipped, {counts.cancelled} cancelled); "
            f"{counts.refused} refused by the rules; read them at minVersion {counts.version}"
        )

    settings.shop_data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(go())


@cli.command("migrate")
def migrate_command(
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Change nothing: exit 1 unless the store is at the newest revision."
        ),
    ] = False,
) -> None:
    """Migrates the write store to this release's schema, saying which revisions ran.

    The server does the same at start unless SHOP_MIGRATE_ON_START=false. Safe beside
    running servers and other migrations: they take turns.
    """
    settings = Settings()
    shop_logging.configure("WARNING", settings.log_format)

    async def go() -> None:
        engine = create_engine(settings.write_store_url, command_timeout=None)
        try:
            if check:
                await check_schema(engine)
            elif not await create_schema(engine, report=typer.echo):
                typer.echo("nothing to run")
        finally:
            await engine.dispose()
        typer.echo(f"the write store is at revision {migrations.head()}, the newest")

    settings.shop_data_dir.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(go())
    except SchemaError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(code=1) from error


@cli.command("rebuild")
def rebuild_command(
    names: Annotated[
        list[str] | None, typer.Argument(help="Projections to rebuild; default: all.")
    ] = None,
    grace: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds to keep the replaced collections for readers "
            "still switching, before dropping them.",
        ),
    ] = GRACE,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="If another rebuild is running, wait for it to finish instead of refusing.",
        ),
    ] = False,
) -> None:
    """Rebuilds projections from the whole event log into fresh collections, then swaps them in.

    Safe while the server runs: it keeps serving the old documents until the swap. The
    lease of a rebuild that stopped answering (killed, say) is waited out.
    """
    settings = Settings()
    shop_logging.configure("WARNING", settings.log_format)
    chosen = _chosen(names)

    async def go() -> None:
        try:
            async with _stores(settings, check=False) as (engine, store):
                client = store.client
                with _progress() as progress:
                    task = progress.add_task(f"rebuilding {', '.join(p.name for p in chosen)}")

                    def report(done: int, head: int) -> None:
                        progress.update(task, completed=done, total=max(head, 1))

                    result = await rebuild(
                        engine, client[settings.mongodb_database], chosen, report=report,
                        prepared=prepare_rebuild(settings), say=progress.console.print, grace=grace,
                        wait="always" if wait else "stopped", **store.relay_options,
                    )  # fmt: skip
        except RebuildRunning as running:
            typer.echo(f"not rebuilt: {running}", err=True)
            raise typer.Exit(code=1) from running
        typer.echo(f"rebuilt {', '.join(result.projections)} up to version {result.position}")

    asyncio.run(go())


# Why a command that reads the stores could not: unreachable, or a schema it cannot read.
STORE_PROBLEMS = (SchemaError, PyMongoError, SQLAlchemyError, OSError)


@contextlib.asynccontextmanager
async def _stores(
    settings: Settings, *, check: bool = True
) -> AsyncIterator[tuple[AsyncEngine, ReadStore]]:
    """The write store and the read store the server uses, closed on the way out.
    ``check``: raises :class:`SchemaError` unless the write store is at this release's
    schema (these commands read; migrating is ``migrate``'s, or the server's, to do)."""
    async with read_store_url(settings) as url:
        engine = create_engine(settings.write_store_url)
        try:
            store = await connect_read_store(
                url, settings.shop_read_store_timeout, settings.mongodb_database
            )
            try:
                if check:
                    await check_schema(engine)
                yield engine, store
            finally:
                await store.client.close()
        finally:
            await engine.dispose()


def _chosen(names: list[str] | None) -> list[Projection]:
    """The projections named (all for none); exits 2 naming any unknown."""
    chosen, unknown = select(names)
    if unknown:
        known = ", ".join(projection_names())
        typer.echo(f"unknown projection(s): {', '.join(sorted(unknown))}; known: {known}", err=True)
        raise typer.Exit(code=2)
    return chosen


@cli.command("verify")
def verify_command(
    names: Annotated[
        list[str] | None, typer.Argument(help="Projections to verify; default: all.")
    ] = None,
    shown: Annotated[
        int, typer.Option("--show", min=1, help="Differences printed per collection, at most.")
    ] = 50,
) -> None:
    """Compares the read models with the outbox replayed in memory, and with the write model.

    Prints each difference as collection/id: path value != expected; exits 1 if there
    is any, 3 if it could not verify. Safe while the server runs: documents the relay
    writes meanwhile are compared at their own version.
    """
    settings = Settings()
    shop_logging.configure("WARNING", settings.log_format)
    chosen = _chosen(names)

    async def go() -> Verification:
        async with _stores(settings) as (engine, store):
            with _progress() as progress:
                tasks: dict[str, TaskID] = {}

                def report(task: str, done: int, total: int) -> None:
                    if task not in tasks:
                        tasks[task] = progress.add_task(task)
                    progress.update(tasks[task], completed=done, total=max(total, 1))

                db = store.client[settings.mongodb_database]
                return await verify(engine, db, chosen, report=report)

    try:
        result = asyncio.run(go())
    except (VerifyFailed, UnsupportedWrite, *STORE_PROBLEMS) as error:
        typer.echo(f"could not verify: {error}", err=True)
        raise typer.Exit(code=3) from error
    _print_differences(result, shown)
    if result.differences:
        raise typer.Exit(code=1)


def _print_differences(result: Verification, shown: int) -> None:
    """Each difference, ``shown`` at most per collection, then what was compared."""
    groups: dict[tuple[bool, str], list[Difference]] = {}
    for difference in result.differences:
        groups.setdefault((difference.write_model, difference.collection), []).append(difference)
    if groups:
        typer.echo(
            "differences (store value != value replayed from the outbox; "
            "write model: replayed value != write model value):"
        )
    for (write_model, collection), differences in groups.items():
        for difference in differences[:shown]:
            typer.echo(str(difference))
        if len(differences) > shown:
            where = f"write model: {collection}" if write_model else collection
            typer.echo(f"... and {len(differences) - shown} more in {where}")
    positions = ", ".join(f"{name} {position}" for name, position in result.positions.items())
    typer.echo(f"compared {result.documents} documents at the checkpoints ({positions})")
    if result.moved_on:
        typer.echo(f"{result.moved_on} written meanwhile were compared at their own version")
    if result.write_model_head is not None:
        typer.echo(f"compared the write model at outbox position {result.write_model_head}")
    count = len(result.differences)
    typer.echo(f"{count} difference{'' if count == 1 else 's'}" if count else "no differences")


@cli.command("status")
def status_command() -> None:
    """Projections (position, lag, state, last error), the outbox head and the relay lease.

    Read from the stores themselves, so it works whether or not a server runs.
    """
    import sqlalchemy as sa
    from rich.console import Console
    from rich.table import Table

    from domain import outbox
    from projections.lease import holder_alive
    from projections.status import projection_states
    from projections.tables import relay_leases

    settings = Settings()
    shop_logging.configure("WARNING", settings.log_format)

    async def go() -> None:
        async with _stores(settings) as (engine, store):
            async with engine.connect() as conn:
                head = await outbox.head(conn)
                lease = (
                    (
                        await conn.execute(
                            sa.select(relay_leases).where(relay_leases.c.name == "relay")
                        )
                    )
                    .mappings()
                    .first()
                )
            db = store.client[settings.mongodb_database]
            states = await projection_states(db, head)
            alive = await holder_alive(db)
        table = Table("projection", "position", "lag", "state", "last error")
        for state in states:
            table.add_row(state.name, str(state.position), str(state.lag), state.state,
                          (state.last_error or "")[:80])  # fmt: skip
        console = Console()
        console.print(table)
        holder = lease["owner"] if lease and alive else None
        epoch = lease["epoch"] if lease else 0
        console.print(f"outbox head: {head}")
        console.print(f"relay lease: {holder or 'nobody holds it'} (epoch {epoch})")

    try:
        asyncio.run(go())
    except STORE_PROBLEMS as error:
        typer.echo(f"no status: {error}", err=True)
        raise typer.Exit(code=1) from error


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(),
    )  # fmt: skip


@contextlib.asynccontextmanager
async def read_store_url(settings: Settings) -> AsyncIterator[str]:
    """MONGODB_URL, the running server's embedded FerretDB, or one started for this command."""
    if settings.mongodb_url:
        yield settings.mongodb_url
        return
    data_dir = settings.shop_data_dir / "ferretdb"
    if url := running_url(data_dir):
        yield url
        return
    ferretdb = EmbeddedFerretDB(_ensure_read_store(settings), data_dir)
    try:
        yield await asyncio.to_thread(ferretdb.start)
    finally:
        ferretdb.stop()


def main() -> None:
    cli()
