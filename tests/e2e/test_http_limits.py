"""HTTP limits in front of the app, against real servers over raw sockets: the header
block's size, the time to send it, idle keep-alive, connections per process, and
``/metrics`` on its own port.

Two servers for the module: ``limited`` with short timeouts and a metrics port,
``crowded`` with room for few connections.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from app.ferretdb import free_port
from app.http import MAX_HEADER_LINES
from tests.conftest import eventually
from tests.e2e.conftest import Server, admin_token, module_server, rss

MAX_HEADER_BYTES = 16_384  # the default
HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
KEEP_ALIVE = 1
CONSISTENCY_TIMEOUT = 3.0  # a request slower than the header timeout
MAX_CONNECTIONS = 20
METRICS_PORT = free_port()
WITHIN = 15.0
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def limited(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with module_server(
        tmp_path_factory, mongo_url, "http-limits",
        SHOP_HTTP_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
        SHOP_HTTP_BODY_TIMEOUT=str(BODY_TIMEOUT),
        SHOP_HTTP_KEEP_ALIVE=str(KEEP_ALIVE),
        SHOP_CONSISTENCY_TIMEOUT=str(CONSISTENCY_TIMEOUT),
        SHOP_METRICS_PORT=str(METRICS_PORT),
    ) as server:  # fmt: skip
        yield server


@pytest.fixture(scope="module")
def crowded(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # Timeouts far beyond the test, so that only the connection limit closes anything.
    with module_server(
        tmp_path_factory, mongo_url, "http-limits",
        SHOP_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
        SHOP_HTTP_HEADER_TIMEOUT="120",
        SHOP_HTTP_KEEP_ALIVE="120",
    ) as server:  # fmt: skip
        yield server


# Raw HTTP/1.1 ---------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, Any]:
        """The first error of a GraphQL-shaped JSON body."""
        errors = json.loads(self.body)["errors"]
        assert isinstance(errors, list), self.body
        first: dict[str, Any] = errors[0]
        return first


def parse(head: bytes, body: bytes) -> Answer:
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in filter(None, lines):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split()[1]), headers, body)


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WITHIN)
    answer = parse(head, b"")
    length = int(answer.headers["content-length"])
    answer.body = await asyncio.wait_for(reader.readexactly(length), WITHIN)
    return answer


async def closed(reader: asyncio.StreamReader) -> bool:
    """Whether the server closes the connection (within WITHIN) with nothing more sent."""
    return await asyncio.wait_for(reader.read(), WITHIN) == b""


def request(
    method: str = "GET",
    path: str = "/healthz",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def get_of(size: int) -> bytes:
    """A GET /healthz whose request line and headers (blank line included) are ``size`` bytes."""
    bare = len(request(headers={"X-Padding": ""}))
    return request(headers={"X-Padding": "p" * (size - bare)})


async def exchange(server: Server, *requests: bytes) -> list[Answer]:
    """Sends each request after the answer to the one before, on one connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        answers = []
        for each in requests:
            writer.write(each)
            answers.append(await read_answer(reader))
        return answers
    finally:
        writer.close()


async def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with httpx.AsyncClient(timeout=WITHIN) as http:
        response = await http.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def refused(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], reason: str) -> float:
    return samples[("shop_http_connections_refused_total", frozenset({("reason", reason)}))]


class PeakRss:
    """The largest resident memory of a process, sampled while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = self.peak = rss(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss(self.pid))


# The header block -----------------------------------------------------------------------------

FILLER_LINE = b"X-Filler: " + b"a" * 88 + b"\r\n"  # 100 bytes
FILLER_CHUNK = FILLER_LINE * 40
FILLER_TOTAL = 64 * MIB


def send_header_lines_until_refused(port: int) -> tuple[int, bytes]:
    """Sends up to 64 MiB of header lines in 4 kB writes, then reads what comes back until
    the server closes: (bytes sent, bytes received)."""
    sent = 0
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=WITHIN) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            while sent < FILLER_TOTAL:
                sock.sendall(FILLER_CHUNK)
                sent += len(FILLER_CHUNK)
            sock.sendall(b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed: what it answered is still to be read
        try:
            while chunk := sock.recv(65_536):
                received += chunk
        except ConnectionResetError:
            pass  # the answer came before the reset (it is checked below)
    return sent, received


async def test_megabytes_of_header_lines_are_refused_431_without_growing_memory(
    limited: Server,
) -> None:
    assert limited.process is not None
    with PeakRss(limited.process.pid) as memory:
        sent, received = await asyncio.to_thread(send_header_lines_until_refused, limited.port)
    head, _, body = received.partition(b"\r\n\r\n")
    answer = parse(head, body)
    assert answer.status == 431, received[:500]
    assert answer.headers["connection"] == "close"
    assert answer.headers["content-type"] == "application/json"
    error = answer.error()
    assert error["extensions"] == {
        "code": "LIMIT_EXCEEDED", "limit": "SHOP_MAX_HEADER_BYTES", "maximum": MAX_HEADER_BYTES,
    }  # fmt: skip
    assert "SHOP_MAX_HEADER_BYTES" in error["message"]
    assert sent < FILLER_TOTAL, "the server read all of it"
    grown = memory.peak - memory.baseline
    assert grown < 20 * MIB, f"RSS grew {grown / MIB:.1f} MiB"
    [healthy] = await exchange(limited, request())
    assert healthy.status == 200


async def test_headers_up_to_the_limit_are_served_and_one_byte_more_is_refused(
    limited: Server,
) -> None:
    # About 8 KiB of ordinary headers, twice on one kept-alive connection.
    headers = {
        "Authorization": f"Bearer {admin_token()}",
        "Content-Type": "application/json",
        "Cookie": "; ".join(f"c{n}={'v' * 90}" for n in range(40)),
        "Traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "X-Client-Info": "x" * (8 * 1024 - 4500),
    }
    graphql = request("POST", "/graphql", headers, json.dumps({"query": "{ __typename }"}).encode())
    assert 8 * 1024 - 500 < graphql.index(b"\r\n\r\n") < 8 * 1024 + 500
    answers = await exchange(limited, graphql, graphql)
    for answer in answers:
        assert answer.status == 200, answer
        assert json.loads(answer.body) == {"data": {"__typename": "Query"}}
        assert "connection" not in answer.headers  # kept alive

    [at_limit] = await exchange(limited, get_of(MAX_HEADER_BYTES))
    assert at_limit.status == 200

    reader, writer = await asyncio.open_connection("127.0.0.1", limited.port)
    try:
        writer.write(get_of(MAX_HEADER_BYTES + 1))
        over = await read_answer(reader)
        assert over.status == 431, over
        assert over.headers["connection"] == "close"
        assert over.error()["extensions"]["limit"] == "SHOP_MAX_HEADER_BYTES"
        assert await closed(reader)
    finally:
        writer.close()


async def test_more_header_lines_than_allowed_are_refused_however_short(limited: Server) -> None:
    """Short lines cost the server ~200 bytes each whatever their size: 16 KB of ``a:b``
    held 256 KiB per connection."""
    many = {f"a{n}": "b" for n in range(MAX_HEADER_LINES - 1)}  # and Host
    [answer] = await exchange(limited, request(headers=many))
    assert answer.status == 200
    reader, writer = await asyncio.open_connection("127.0.0.1", limited.port)
    try:
        writer.write(request(headers={**many, "one-more": "b"}))
        over = await read_answer(reader)
        assert over.status == 431, over
        assert over.error()["extensions"]["limit"] == "SHOP_MAX_HEADER_BYTES"
        assert "more than 100 headers" in over.error()["message"]
        assert await closed(reader)
    finally:
        writer.close()


# Time to send the headers, and idle keep-alive -----------------------------------------------


class SlowSender(asyncio.Protocol):
    """Starts a request and adds a header line every half second, never ending it (with
    ``lines=False``, sends nothing at all); records what comes back and when it closes."""

    def __init__(self, lines: bool = True) -> None:
        self.lines = lines
        self.received = b""
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._next: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.lines:
            transport.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            self._add_line()

    def _add_line(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(b"X-Slow: 1\r\n")
            self._next = asyncio.get_running_loop().call_later(0.5, self._add_line)

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        if self._next is not None:
            self._next.cancel()
        if not self.closed.done():
            self.closed.set_result(None)


async def test_slow_header_senders_are_closed_while_a_slower_request_is_answered(
    limited: Server,
) -> None:
    loop = asyncio.get_running_loop()
    senders = []
    for lines in [True] * 200 + [False]:
        _, sender = await loop.create_connection(
            lambda lines=lines: SlowSender(lines), "127.0.0.1", limited.port
        )
        senders.append(sender)
    try:
        # Meanwhile a request that takes longer than the header timeout (minVersion waits
        # SHOP_CONSISTENCY_TIMEOUT), then another on the same connection.
        waiting = request(
            "POST", "/graphql",
            {"Authorization": f"Bearer {admin_token()}", "Content-Type": "application/json"},
            json.dumps({"query": "{ dashboard(minVersion: 1000000) { version } }"}).encode(),
        )  # fmt: skip
        started = loop.time()
        slow, after = await exchange(limited, waiting, request())
        assert loop.time() - started > HEADER_TIMEOUT
        assert slow.status == 200, slow
        assert slow.error()["extensions"]["code"] == "NOT_YET_CONSISTENT"
        assert after.status == 200

        await asyncio.wait_for(
            asyncio.gather(*(sender.closed for sender in senders)), HEADER_TIMEOUT + WITHIN
        )
    finally:
        for sender in senders:
            sender.transport.close()
    *slowed, idle = senders
    for sender in slowed:
        head, _, body = sender.received.partition(b"\r\n\r\n")
        answer = parse(head, body)
        assert answer.status == 408, sender.received
        assert answer.headers["connection"] == "close"
        assert answer.error()["extensions"]["limit"] == "SHOP_HTTP_HEADER_TIMEOUT"
    assert idle.received == b""  # nothing asked, nothing answered


async def test_a_body_that_stops_coming_is_answered_408_and_its_connection_closed(
    limited: Server,
) -> None:
    """Headers complete, then the body stalls: the connection was held for good, so a
    few of them filled SHOP_MAX_CONNECTIONS."""
    since = limited.log.stat().st_size
    loop = asyncio.get_running_loop()
    stalled = []
    for _ in range(50):
        reader, writer = await asyncio.open_connection("127.0.0.1", limited.port)
        head = request("POST", "/graphql", {"Content-Type": "application/json"}, b"x" * 100)
        writer.write(head[:-90])  # the headers and 10 bytes of the body
        stalled.append((reader, writer))
    started = loop.time()
    try:
        for reader, _ in stalled:
            answer = await read_answer(reader)
            assert answer.status == 408, answer
            assert answer.error()["extensions"]["limit"] == "SHOP_HTTP_BODY_TIMEOUT"
            assert await closed(reader)
    finally:
        for _, writer in stalled:
            writer.close()
    assert loop.time() - started >= BODY_TIMEOUT * 0.9
    [answer] = await exchange(limited, request())  # the server serves on
    assert answer.status == 200
    with limited.log.open("rb") as log:
        log.seek(since)
        assert b"Traceback" not in log.read()


async def test_a_header_block_pipelined_behind_a_request_is_counted(limited: Server) -> None:
    """Bytes after a request's end in the same read went uncounted: a 17,000-byte header
    block sent right behind a GET was served."""
    answers = await exchange_pipelined(limited, request() + get_of(MAX_HEADER_BYTES + 600))
    # The first is answered; the second is refused (431), or, arriving while the first
    # is answered, ends the connection after it: either way it is never served.
    assert [a.status for a in answers] in ([200], [200, 431]), answers


async def exchange_pipelined(server: Server, data: bytes) -> list[Answer]:
    """Sends ``data`` in one write and reads answers until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(data)
        answers = []
        while not reader.at_eof():
            try:
                answers.append(await read_answer(reader))
            except asyncio.IncompleteReadError:
                break
        return answers
    finally:
        writer.close()


async def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_time(
    limited: Server,
) -> None:
    before = await scrape(METRICS_PORT)
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", limited.port)
    try:
        writer.write(request())
        assert (await read_answer(reader)).status == 200
        answered = loop.time()
        assert await closed(reader)
        # uvicorn's own default is 5 s; SHOP_HTTP_KEEP_ALIVE is 1 s here.
        assert loop.time() - answered < KEEP_ALIVE + 2.5
    finally:
        writer.close()
    after = await scrape(METRICS_PORT)
    # Closed by the keep-alive time, not by the (longer) header timeout.
    assert refused(after, "header_timeout") == refused(before, "header_timeout")


# Connections per process ----------------------------------------------------------------------


async def test_past_max_connections_a_new_connection_is_answered_503_until_some_close(
    crowded: Server,
) -> None:
    held: list[asyncio.StreamWriter] = []

    async def open_served() -> bool:
        """Opens a connection and keeps it if a request on it is answered 200."""
        reader, writer = await asyncio.open_connection("127.0.0.1", crowded.port)
        writer.write(request())
        try:
            answer = await read_answer(reader)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            answer = None  # refused before the request arrived
        if answer is not None and answer.status == 200:
            held.append(writer)
            return True
        writer.close()
        return False

    async def refused_at_once() -> Answer:
        """A new connection, to which the server speaks first: 503, then it closes."""
        reader, writer = await asyncio.open_connection("127.0.0.1", crowded.port)
        try:
            answer = await read_answer(reader)
            assert await closed(reader)
            return answer
        finally:
            writer.close()

    # A WebSocket takes a place too (and upgrades still work).
    async with connect(crowded.ws_url, subprotocols=[Subprotocol("graphql-transport-ws")]) as ws:
        payload = {"Authorization": f"Bearer {admin_token()}"}
        await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
        ack = json.loads(await asyncio.wait_for(ws.recv(), WITHIN))
        assert ack["type"] == "connection_ack"
        try:
            for _ in range(MAX_CONNECTIONS - 1):
                await eventually(open_served, within=WITHIN)
            refusal = await refused_at_once()
            assert refusal.status == 503, refusal
            assert refusal.headers["connection"] == "close"
            assert refusal.error()["extensions"] == {
                "code": "LIMIT_EXCEEDED", "limit": "SHOP_MAX_CONNECTIONS",
                "maximum": MAX_CONNECTIONS,
            }  # fmt: skip

            for writer in held[:5]:
                writer.close()
                await writer.wait_closed()
            del held[:5]
            for _ in range(5):
                await eventually(open_served, within=WITHIN)
            assert (await refused_at_once()).status == 503
            await asyncio.wait_for(await ws.ping(), WITHIN)  # the WebSocket is still open
        finally:
            for writer in held:
                writer.close()


# /metrics on its own port ---------------------------------------------------------------------


async def test_metrics_are_served_on_the_metrics_port_alone(limited: Server) -> None:
    async with httpx.AsyncClient(timeout=WITHIN) as http:
        public = await http.get(f"{limited.url}/metrics")
    assert public.status_code == 404
    before = await scrape(METRICS_PORT)
    [over] = await exchange(limited, get_of(MAX_HEADER_BYTES + 1))
    assert over.status == 431
    after = await scrape(METRICS_PORT)
    assert refused(after, "header_too_large") == refused(before, "header_too_large") + 1
    assert ("shop_projection_checkpoint", frozenset({("projection", "products")})) in after
