"""A throwaway PostgreSQL cluster on loopback, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from sqlalchemy.ext.asyncio import create_async_engine

from app.ferretdb import free_port


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    if not found[-1]:
        raise RuntimeError(f"PostgreSQL's {name} not found: `make setup` installs postgresql")
    return found[-1]


class Postgres:
    """A throwaway PostgreSQL cluster on loopback, stopped and started at will."""

    def __init__(self) -> None:
        self.data = Path(tempfile.mkdtemp(prefix="shop-postgres-"))
        self.as_postgres: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.data, "postgres", "postgres")
            self.as_postgres = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        self._run([*self.as_postgres, _postgres_bin("initdb"), "-D", str(self.data), "-A",
                   "trust", "-U", "postgres"])  # fmt: skip
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}"

    @staticmethod
    def _run(command: list[str]) -> None:
        subprocess.run(command, check=True, capture_output=True)

    def _ctl(self, *args: str) -> None:
        self._run([*self.as_postgres, _postgres_bin("pg_ctl"), "-D", str(self.data), *args])

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.data} -c fsync=off -c max_connections=200"
        self._ctl("-o", options, "-l", str(self.data / "log"), "-w", "start")

    def stop(self) -> None:
        self._ctl("-m", "immediate", "stop")

    def libpq_url(self, database: str) -> str:
        """The URL of ``database`` for programs that speak libpq's form (FerretDB)."""
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    async def create_database(self, name: str) -> None:
        await create_database(self.url, name)

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.data, ignore_errors=True)


async def create_database(server: str, name: str, template: str | None = None) -> None:
    """Creates database ``name`` on the PostgreSQL server at ``server`` (a URL without
    one), empty or as a copy of database ``template``."""
    copy = f" TEMPLATE {template}" if template else ""
    await _run_as_admin(server, f"CREATE DATABASE {name}{copy}")


async def drop_database(server: str, name: str) -> None:
    """Drops database ``name`` on the PostgreSQL server at ``server``, ending any
    session still connected to it."""
    await _run_as_admin(server, f"DROP DATABASE {name} WITH (FORCE)")


async def _run_as_admin(server: str, statement: str) -> None:
    """Runs ``statement`` outside a transaction, connected to the server's ``postgres``
    database (neither statement may run inside one, nor on the database it names)."""
    admin = create_async_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.exec_driver_sql(statement)
    finally:
        await admin.dispose()
