"""The ``cqrs-shop`` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from app import logging as shop_logging
from app.ferretdb import ReadStoreUnavailable, ensure_binary
from app.settings import Role, Settings

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
    config = uvicorn.Config(
        create_app(settings, role),
        host=host,
        port=port,
        log_config=None,
        ws="websockets-sansio",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise typer.Exit(code=3)


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


def main() -> None:
    cli()
