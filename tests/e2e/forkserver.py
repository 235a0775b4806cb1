"""Starts the end-to-end tests' server processes by forking one that has imported the app.

Importing the server (Strawberry, SQLAlchemy, PyMongo, uvicorn, OpenTelemetry) takes
most of a server's start-up: seconds, against half a second for the rest. The suite
starts a couple of hundred servers, so it imports once, in a fork server started on
first use, and forks each server from it. Every server is still a real process of its
own: its own pid, sockets, event loop and signal handlers (kill -9 and SIGSTOP work as
on any process), running ``cqrs-shop`` with the arguments and environment it is given.

The fork server runs ``python -m tests.e2e.forkserver``: one JSON request a line on
stdin (``argv``, ``env``, ``cwd``, ``log``), one JSON line back on stdout for each
process started (``pid``) and each process that ended (``exited``, its exit code as
:class:`subprocess.Popen` gives it: negative for a signal). It has one thread, so a
fork copies no lock held by another.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class ForkedProcess:
    """A forked server, with the part of :class:`subprocess.Popen` the tests use."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self._server = server
        self.pid = pid

    @property
    def returncode(self) -> int | None:
        return self._server.exit_code(self.pid)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        code = self._server.wait(self.pid, timeout)
        if code is None:
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
        return code

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The test side: sends requests, and keeps the exit codes the fork server reports."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.forkserver"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._changed = threading.Condition()
        self._started: list[int] = []
        self._exits: dict[int, int] = {}
        self._send_lock = threading.Lock()
        threading.Thread(target=self._read, name="forkserver-reader", daemon=True).start()

    def spawn(
        self, argv: list[str], env: dict[str, str], cwd: Path, log: Path, stderr: Path | None = None
    ) -> ForkedProcess:
        """Starts ``cqrs-shop ARGV``, its output appended to ``log`` (its standard error
        to ``stderr`` if given)."""
        request = {"argv": argv, "env": env, "cwd": str(cwd), "log": str(log),
                   "stderr": str(stderr or log)}  # fmt: skip
        with self._send_lock, self._changed:
            assert self._process.stdin is not None
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
            if not self._changed.wait_for(lambda: self._started or not self._alive(), 60):
                raise RuntimeError("the fork server did not answer within 60 s")
            if not self._started:
                raise RuntimeError(f"the fork server ended (exit {self._process.poll()})")
            return ForkedProcess(self, self._started.pop())

    def exit_code(self, pid: int) -> int | None:
        with self._changed:
            return self._exits.get(pid)

    def wait(self, pid: int, timeout: float | None) -> int | None:
        with self._changed:
            self._changed.wait_for(lambda: pid in self._exits or not self._alive(), timeout)
            return self._exits.get(pid)

    def close(self) -> None:
        """Ends the fork server; it kills any process it started that still runs."""
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def _alive(self) -> bool:
        return self._process.poll() is None

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            message = json.loads(line)
            with self._changed:
                if "pid" in message:
                    self._started.append(message["pid"])
                else:
                    self._exits[message["exited"]] = message["code"]
                self._changed.notify_all()
        self._process.wait()
        with self._changed:
            self._changed.notify_all()


def run(argv: list[str], env: dict[str, str], timeout: float = 300) -> CompletedProcess[str]:
    """Runs ``cqrs-shop ARGV`` to its end, like :func:`subprocess.run` capturing its output."""
    with tempfile.TemporaryDirectory(prefix="cqrs-shop-run-") as directory:
        stdout, stderr = Path(directory, "stdout"), Path(directory, "stderr")
        process = shared().spawn(argv, env, ROOT, stdout, stderr)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        return CompletedProcess(argv, code, stdout.read_text(), stderr.read_text())


_shared: ForkServer | None = None
_shared_lock = threading.Lock()


def shared() -> ForkServer:
    """This test process's fork server, started on first use and ended at exit."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ForkServer()
            atexit.register(_shared.close)
        return _shared


# The fork server's side.


def _run_child(request: dict[str, Any], reply: int) -> None:
    """In the forked child: becomes ``cqrs-shop ARGV``; never returns."""
    code = 1
    try:
        os.close(reply)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        for fd, path in ((1, request["log"]), (2, request["stderr"])):
            output = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(output, fd)
            os.close(output)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.argv = ["cqrs-shop", *request["argv"]]
        from app.cli import main

        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


# What a server imports: the CLI, and what it imports only when serving (the ASGI app,
# uvicorn's loop and protocols, the database drivers).
PRELOAD = (
    "app.cli",
    "app.asgi",
    "uvloop",
    "uvicorn.loops.uvloop",
    "uvicorn.lifespan.on",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.websockets_sansio_impl",
    "aiosqlite",
    "sqlalchemy.dialects.sqlite.aiosqlite",
    "sqlalchemy.dialects.postgresql.asyncpg",
)


def _serve() -> None:
    for module in PRELOAD:
        importlib.import_module(module)
    assert threading.active_count() == 1, "a fork must not copy another thread's locks"
    reply = os.dup(1)
    children: set[int] = set()

    def send(message: dict[str, int]) -> None:
        os.write(reply, (json.dumps(message) + "\n").encode())

    def reap() -> None:
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                send({"exited": pid, "code": os.waitstatus_to_exitcode(status)})

    requests = sys.stdin.buffer
    pending = b""
    while True:
        ready, _, _ = select.select([requests], [], [], 0.02)
        reap()
        if not ready:
            continue
        chunk = os.read(requests.fileno(), 65536)
        if not chunk:
            break
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                _run_child(request, reply)
            children.add(pid)
            send({"pid": pid})
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in list(children):
        os.waitpid(pid, 0)


if __name__ == "__main__":
    _serve()
