"""The embedded read store: a FerretDB 1.24 (SQLite backend) built once and supervised.

Building. ``go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2`` cannot be
used as is: that form asks the module proxy for FerretDB's version list (refused
by some proxies), and the module's published source lacks the generated
``build/version/version.txt`` that FerretDB embeds, so the binary panics at start.
So a small module in the cache requires FerretDB v1.24.2, vendors it, adds
``version.txt``, and runs ``go install`` on the vendored tree with ``GOBIN`` set to
the cache's ``bin``. ``-checklinkname=0`` lets FerretDB's dependencies link on
newer Go releases.

Running. FerretDB listens on a free 127.0.0.1 port, telemetry off, no debug
listener, its files under the data directory. It is told to die with its parent
(``PR_SET_PDEATHSIG``), so a crashed server never leaves one behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from app.settings import Settings

log = logging.getLogger(__name__)

VERSION = "v1.24.2"
MODULE = "github.com/FerretDB/FerretDB"
PACKAGE = f"{MODULE}/cmd/ferretdb"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 3.0
RESTART_BACKOFF = 0.1
MAX_RESTART_BACKOFF = 5.0
# A FerretDB that ran this long before exiting is restarted after the shortest back-off.
STABLE_AFTER = 60.0
# Where a running embedded FerretDB leaves its URL, for CLI commands beside the server.
URL_FILE = "url"

GO_MOD = f"""module cqrs-shop/ferretdb-build

go 1.22

require {MODULE} {VERSION}
"""
TOOLS_GO = f"""//go:build tools

package tools

import _ "{PACKAGE}"
"""


class ReadStoreUnavailable(RuntimeError):
    """The embedded read store could not be built or started."""


def binary_path(cache_dir: Path) -> Path:
    return cache_dir / "bin" / "ferretdb"


def _is_wanted_build(binary: Path) -> bool:
    if not binary.is_file():
        return False
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except OSError:
        return False
    return f"version: {VERSION}" in out


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_binary(cache_dir: Path, report: Callable[[str], None] = log.info) -> Path:
    """The FerretDB binary in ``cache_dir``, built first if missing (about a minute)."""
    binary = binary_path(cache_dir)
    if _is_wanted_build(binary):
        return binary
    go = shutil.which("go")
    if go is None:
        raise ReadStoreUnavailable(
            "Go is needed to build the embedded read store (FerretDB) but is not installed. "
            "Install Go 1.22 or newer (https://go.dev/doc/install, or `apt-get install golang`), "
            "or set MONGODB_URL to a MongoDB server."
        )
    with _file_lock(cache_dir / "ferretdb-build.lock"):
        if _is_wanted_build(binary):
            return binary
        _build(go, cache_dir, binary, report)
    if not _is_wanted_build(binary):
        raise ReadStoreUnavailable(f"the FerretDB build at {binary} does not report {VERSION}")
    return binary


def _build(go: str, cache_dir: Path, binary: Path, report: Callable[[str], None]) -> None:
    work = cache_dir / "ferretdb-build"
    work.mkdir(parents=True, exist_ok=True)
    (work / "go.mod").write_text(GO_MOD)
    (work / "tools.go").write_text(TOOLS_GO)
    env = {**os.environ, "GOBIN": str(binary.parent), "GOFLAGS": "-mod=mod"}
    steps = [
        ("resolving FerretDB's module graph", [go, "mod", "tidy"]),
        ("vendoring FerretDB's sources", [go, "mod", "vendor"]),
    ]
    for n, (what, command) in enumerate(steps, 1):
        report(f"building FerretDB {VERSION} [{n}/3]: {what}")
        _run(command, work, env)
    version_dir = work / "vendor" / Path(MODULE) / "build" / "version"
    (version_dir / "version.txt").write_text(VERSION)
    report(f"building FerretDB {VERSION} [3/3]: compiling (about a minute)")
    env["GOFLAGS"] = "-mod=vendor"
    _run([go, "install", "-ldflags=-checklinkname=0", PACKAGE], work, env)
    shutil.rmtree(work / "vendor", ignore_errors=True)
    report(f"FerretDB {VERSION} installed at {binary}")


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ReadStoreUnavailable(
            f"`{' '.join(command)}` failed with exit code {result.returncode}:\n"
            f"{result.stderr[-4000:]}"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class EmbeddedFerretDB:
    """One FerretDB process with its files in ``data_dir``, on SQLite (the default) or on
    the PostgreSQL database ``postgresql_url`` (the production-like read store, where
    several FerretDB processes may front one database).

    :meth:`supervise` restarts it whenever it exits, on the same port, so clients
    reconnect to the URL they have.
    """

    def __init__(self, binary: Path, data_dir: Path, *, postgresql_url: str | None = None) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.postgresql_url = postgresql_url
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.url = ""
        self.restarts = 0
        """How many times :meth:`supervise` started it again."""
        self._stopping = False

    @property
    def log_path(self) -> Path:
        return self.data_dir / "ferretdb.log"

    def start(self, timeout: float = START_TIMEOUT) -> str:
        """Starts FerretDB and waits until it answers ``ping``; its MongoDB URL."""
        self.launch()
        return self.wait_until_ready(timeout)

    def launch(self) -> None:
        """Starts the process (on the port it had, if it ran before) without waiting.

        Call it from the thread that will outlive the child (the event loop's): the
        child is told to die with the thread that started it (``PR_SET_PDEATHSIG``).
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stopping = False
        self.port = self.port or free_port()
        if self.postgresql_url is None:
            # WAL keeps a prefix of commits on power loss, and the relay writes documents
            # before their checkpoint, so NORMAL never leaves a checkpoint ahead of its data.
            backend = [
                "--handler=sqlite",
                f"--sqlite-url=file:{self.data_dir.resolve()}/?_pragma=synchronous(normal)",
            ]
        else:
            backend = ["--handler=postgresql", f"--postgresql-url={self.postgresql_url}"]
        args = [
            str(self.binary),
            *backend,
            f"--listen-addr=127.0.0.1:{self.port}",
            f"--state-dir={self.data_dir.resolve()}",
            "--telemetry=disable",
            "--debug-addr=-",
            "--log-level=warn",
        ]
        env = {**os.environ, "DO_NOT_TRACK": "1"}
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                args,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent,
                # Its own process group: a Ctrl-C meant for the server does not stop the
                # read store under it (the server stops it last, on its way out).
                process_group=0,
            )
        self.url = f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def wait_until_ready(self, timeout: float = START_TIMEOUT) -> str:
        """Waits until the launched process answers on its port (ending it if it does not)."""
        try:
            self._wait_until_ready(timeout, self.log_path)
        except BaseException:
            self._end_child()
            raise
        (self.data_dir / URL_FILE).write_text(self.url)
        log.info("embedded FerretDB %s listening on 127.0.0.1:%d", VERSION, self.port)
        return self.url

    def _wait_until_ready(self, timeout: float, log_path: Path) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        client: MongoClient[dict[str, object]] = MongoClient(
            self.url, serverSelectionTimeoutMS=250, connectTimeoutMS=250
        )
        try:
            while True:
                if self.process.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise ReadStoreUnavailable(
                        f"FerretDB exited with code {self.process.returncode}:\n{tail}"
                    )
                with contextlib.suppress(PyMongoError):
                    # Whoever answers must be our child: after a restart on the same
                    # port, another program may have taken it while ours failed to bind.
                    if client.admin.command("serverStatus").get("pid") == self.process.pid:
                        return
                if time.monotonic() > deadline:
                    raise ReadStoreUnavailable(f"FerretDB did not answer ping within {timeout}s")
                time.sleep(0.05)
        finally:
            client.close()

    async def supervise(self, on_restart: Callable[[], None] = lambda: None) -> None:
        """Runs until cancelled: whenever FerretDB exits, reaps it and starts it again
        on the same port, after a back-off (0.1 s doubling to 5 s, back to 0.1 s once it
        has run for a minute); calls ``on_restart`` when it answers again."""
        backoff = RESTART_BACKOFF
        while True:
            process = self.process
            started = time.monotonic()
            if process is not None:
                code = await _exited(process)
                if self._stopping:
                    return
                log.error(
                    "embedded FerretDB exited with code %s; restarting in %.1fs\n%s",
                    code, backoff, self._log_tail(),
                )  # fmt: skip
                if time.monotonic() - started > STABLE_AFTER:
                    backoff = RESTART_BACKOFF
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_RESTART_BACKOFF)
            if self._stopping:
                return
            self.launch()
            try:
                await asyncio.to_thread(self.wait_until_ready)
            except ReadStoreUnavailable as error:
                log.error("restarting the embedded FerretDB failed: %s", error)
                continue
            self.restarts += 1
            on_restart()

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-1000:]
        except OSError:
            return ""

    def stop(self) -> None:
        self._stopping = True
        (self.data_dir / URL_FILE).unlink(missing_ok=True)
        self._end_child()

    def _end_child(self) -> None:
        """Terminates (then kills) the child if it runs, and reaps it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _exited(process: subprocess.Popen[bytes]) -> int:
    """Waits, without a thread or polling, until ``process`` exits; reaps it; its code."""
    if process.poll() is not None:
        return process.returncode
    loop = asyncio.get_running_loop()
    try:
        descriptor = os.pidfd_open(process.pid)
    except ProcessLookupError:  # exited (and reaped) in between
        return process.wait()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(descriptor, readable)
    try:
        await exited
    finally:
        loop.remove_reader(descriptor)
        os.close(descriptor)
    return process.wait()


def running_url(data_dir: Path) -> str | None:
    """The URL of an embedded FerretDB already serving ``data_dir``, if one answers."""
    try:
        url = (data_dir / URL_FILE).read_text().strip()
    except OSError:
        return None
    client: MongoClient[dict[str, object]] = MongoClient(url, serverSelectionTimeoutMS=500)
    try:
        client.admin.command("ping")
    except PyMongoError:
        return None
    finally:
        client.close()
    return url


# FerretDB 1.24's SQLite backend looks documents up by ``_ferretdb_sjson->'$._id'``
# (every find and every update by _id), but indexes ``_ferretdb_sjson->"_id"``: a
# different expression, so SQLite never uses the index and every update scans the
# table (36 ms per update at 2,000 documents, growing with the collection). The same
# lookup expression, indexed, makes them 2 ms whatever the size.
ID_INDEX_SUFFIX = "_shop_id_lookup"
COLLECTIONS_TABLE = "_ferretdb_collections"


def prepare_rebuild(settings: Settings) -> Callable[[], Awaitable[None]]:
    """What a rebuild awaits once its fresh collections exist (``rebuild(prepared=…)``):
    on the embedded FerretDB, their ``_id`` indexes; nothing on another read store."""

    async def prepared() -> None:
        if settings.mongodb_url is None:
            await asyncio.to_thread(index_document_ids, settings.shop_data_dir / "ferretdb")

    return prepared


def index_document_ids(data_dir: Path) -> int:
    """Adds the ``_id`` lookup index to every FerretDB table under ``data_dir`` lacking it.

    Only for the embedded FerretDB, whose files this process owns; the index is
    invisible to FerretDB (it is not in its metadata) and goes with the table when a
    collection is dropped. Idempotent; returns how many indexes it created.
    """
    created = 0
    for database in sorted(data_dir.glob("*.sqlite")):
        try:
            created += _index_database(database)
        except sqlite3.Error as error:  # an optimisation only: never a reason to fail
            log.warning("could not index %s: %s", database.name, error)
    return created


def _index_database(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as connection:
        if not connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (COLLECTIONS_TABLE,)
        ).fetchone():
            return 0
        indexes = {row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}  # fmt: skip
        tables = [
            row[0] for row in connection.execute(f"SELECT table_name FROM {COLLECTIONS_TABLE}")
        ]
        created = 0
        for table in tables:
            name = f"{table}{ID_INDEX_SUFFIX}"
            if name not in indexes:
                connection.execute(
                    f'CREATE INDEX IF NOT EXISTS "{name}" ON "{table}" (_ferretdb_sjson->\'$._id\')'
                )
                created += 1
        connection.commit()
        return created
