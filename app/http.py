"""HTTP limits in front of the application, enforced by uvicorn's protocol before any
request reaches the app: the size of a request's header block, the time a connection
may take to send it, and the connections one process holds. Also the listener that
serves ``/metrics`` alone on ``SHOP_METRICS_PORT``.

A refusal is counted in ``shop_http_connections_refused_total`` by reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from asyncio import TimerHandle
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import uvicorn
from prometheus_client import Counter
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from app.settings import Settings

log = logging.getLogger(__name__)

# Header lines a request may have (Apache's LimitRequestFields): each costs the parser
# and the ASGI scope ~200 bytes however short it is, so bytes alone bound them badly.
MAX_HEADER_LINES = 100
# Data is given to the parser in pieces of at most this many bytes, so what comes after
# a request's end in the same piece (a pipelined request's start) is at most this much.
PIECE = 4096
TOO_MANY_CONNECTIONS = "too_many_connections"
HEADER_TOO_LARGE = "header_too_large"
HEADER_TIMEOUT = "header_timeout"
BODY_TIMEOUT = "body_timeout"
REFUSED = Counter(
    "shop_http_connections_refused",
    "HTTP connections refused or closed before a request reached the app, by reason: "
    f"{TOO_MANY_CONNECTIONS} (503, SHOP_MAX_CONNECTIONS), {HEADER_TOO_LARGE} "
    f"(431, SHOP_MAX_HEADER_BYTES), {HEADER_TIMEOUT} (408 or closed, SHOP_HTTP_HEADER_TIMEOUT), "
    f"{BODY_TIMEOUT} (408, SHOP_HTTP_BODY_TIMEOUT)",
    ["reason"],
    registry=None,
)
for _reason in (TOO_MANY_CONNECTIONS, HEADER_TOO_LARGE, HEADER_TIMEOUT, BODY_TIMEOUT):
    REFUSED.labels(_reason)  # exported at 0 before the first refusal


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int
    header_timeout: float
    body_timeout: float
    max_connections: int

    @classmethod
    def of(cls, settings: Settings) -> HttpLimits:
        return cls(
            max_header_bytes=settings.shop_max_header_bytes,
            header_timeout=settings.shop_http_header_timeout,
            body_timeout=settings.shop_http_body_timeout,
            max_connections=settings.shop_max_connections,
        )


def limited_protocol(limits: HttpLimits) -> type[LimitedHttpProtocol]:
    """The protocol class to give uvicorn (``Config(http=...)``), enforcing ``limits``."""

    class Limited(LimitedHttpProtocol):
        pass

    Limited.limits = limits
    return Limited


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with :class:`HttpLimits` enforced on each connection.

    A connection is *reading a header block* from its opening, and again from the end of
    each request's message, until that request's headers are complete. Meanwhile every
    byte given to the parser is counted (httptools keeps an unfinished header value in
    its own buffer, so counting at ``on_header`` would come too late), and data is fed in
    pieces that never take the count past the limit. The header timeout runs while a
    header block is read and no response is in progress: from the opening, or from the
    end of the last response.
    """

    limits: ClassVar[HttpLimits]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # Bytes of the current header block fed so far; None while a request's body is read.
        self._header_bytes: int | None = 0
        self._header_lines = 0
        self._header_timer: TimerHandle | None = None
        self._body_timer: TimerHandle | None = None
        # Set when a request's message ends, and when the next one begins after it,
        # while one piece is parsed.
        self._ended_in_piece = False
        self._next_began_in_piece = False
        self._request_begun = False  # a request's first bytes came, its headers did not yet
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        limit = self.limits.max_connections
        if len(self.connections) >= limit:
            # Never added to the connections: a refused one does not hold a place.
            self.transport = transport
            self._refused = True
            REFUSED.labels(TOO_MANY_CONNECTIONS).inc()
            log.debug("%d connections open; refusing one more", limit)
            self._answer_and_close(
                503,
                f"too many open connections (limit {limit}: SHOP_MAX_CONNECTIONS)",
                "SHOP_MAX_CONNECTIONS",
                limit,
            )
            return
        super().connection_made(transport)
        self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        while data and not self._refused:
            room = PIECE  # a body: SHOP_MAX_BODY_BYTES bounds it
            if self._header_bytes is not None:
                room = min(PIECE, self.limits.max_header_bytes - self._header_bytes)
                if room <= 0:
                    self._refuse_header_block()
                    return
                self._header_bytes += min(room, len(data))  # the callbacks reset it
            piece, data = data[:room], data[room:]
            self._ended_in_piece = self._next_began_in_piece = False
            super().data_received(piece)
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return  # refused as invalid, or upgraded: the rest is not HTTP for us
            if self._next_began_in_piece and self._header_bytes is not None:
                # A request ended in this piece and the next began in it: the next one's
                # header block is charged the whole piece (at most PIECE bytes too many).
                self._header_bytes = len(piece)

    def on_message_begin(self) -> None:
        self._next_began_in_piece = self._ended_in_piece
        self._request_begun = True
        self._header_lines = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        self._header_lines += 1
        if self._header_lines > MAX_HEADER_LINES:
            self._refuse_header_block(f"the request has more than {MAX_HEADER_LINES} headers")
            return
        super().on_header(name, value)

    def on_body(self, body: bytes) -> None:
        if not self._refused:  # the parser goes on with a refused request's bytes
            super().on_body(body)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._header_bytes = None
        self._request_begun = False
        self._cancel_header_timer()
        super().on_headers_complete()
        if not self._upgrading():
            self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._cancel_body_timer()
        self._ended_in_piece = True
        super().on_message_complete()
        # The rest of the data being fed now is not counted (a pipelined request's start):
        # the next header block may pass the limit by that much, one read at most.
        self._header_bytes = 0
        if not self._upgrading() and not self._responding():
            self._start_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if (
            self._header_bytes is not None
            and not self._responding()
            and not self.transport.is_closing()
        ):
            self._start_header_timer()

    def handle_websocket_upgrade(self) -> None:
        self._cancel_header_timer()
        self._cancel_body_timer()
        super().handle_websocket_upgrade()

    def _upgrading(self) -> bool:
        return bool(self.parser.should_upgrade()) and self._should_upgrade()

    def _responding(self) -> bool:
        """Whether a response is in progress (the newest request's, so all earlier ones')."""
        return self.cycle is not None and not self.cycle.response_complete

    def _start_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(
            self.limits.header_timeout, self._header_timed_out
        )

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        transport = self.transport
        if transport.is_closing() or transport.get_protocol() is not self or self._responding():
            return
        self._refused = True
        REFUSED.labels(HEADER_TIMEOUT).inc()
        timeout = self.limits.header_timeout
        log.debug("%s: request headers not complete within %g s; closing", self._peer(), timeout)
        if self._request_begun:  # part of a request came: it gets an answer
            self._answer_and_close(
                408,
                f"the request headers did not arrive within {timeout:g} s "
                "(SHOP_HTTP_HEADER_TIMEOUT)",
                "SHOP_HTTP_HEADER_TIMEOUT",
                timeout,
            )
        else:  # an idle connection: nothing was asked, so nothing is answered
            transport.close()

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        """The request's body did not arrive whole in time: its handler, waiting for the
        rest, sees the client gone; the client gets a 408 unless a response began."""
        self._body_timer = None
        transport = self.transport
        if transport.is_closing() or transport.get_protocol() is not self:
            return
        self._refused = True
        REFUSED.labels(BODY_TIMEOUT).inc()
        timeout = self.limits.body_timeout
        log.debug("%s: request body not complete within %g s; closing", self._peer(), timeout)
        if self._responding() and self.cycle.response_started:
            transport.close()
            return
        self._answer_and_close(
            408,
            f"the request body did not arrive within {timeout:g} s (SHOP_HTTP_BODY_TIMEOUT)",
            "SHOP_HTTP_BODY_TIMEOUT",
            timeout,
        )

    def _refuse_header_block(self, why: str | None = None) -> None:
        self._refused = True
        self._cancel_header_timer()
        REFUSED.labels(HEADER_TOO_LARGE).inc()
        limit = self.limits.max_header_bytes
        why = why or f"the request line and headers are over {limit} bytes"
        log.debug("%s: %s; closing", self._peer(), why)
        if self._responding():
            # A pipelined request: the response in progress ends, then the connection.
            self.cycle.keep_alive = False
            return
        self._answer_and_close(
            431, f"{why} (SHOP_MAX_HEADER_BYTES)", "SHOP_MAX_HEADER_BYTES", limit
        )

    def _answer_and_close(self, status: int, message: str, setting: str, maximum: float) -> None:
        """Writes a JSON error response naming the limit, then closes the connection."""
        error = {
            "message": message,
            "extensions": {"code": "LIMIT_EXCEEDED", "limit": setting, "maximum": maximum},
        }
        body = json.dumps({"errors": [error]}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join([*head, body]))
        self.transport.close()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "client"


def raise_open_files_limit(max_connections: int) -> None:
    """Raises this process's soft limit on open files towards what ``max_connections``
    needs (a socket each, and some for the stores and logs), as far as the hard limit
    lets it; says so if that is not enough, since connections past it then fail in
    ``accept`` instead of being answered 503."""
    wanted = max_connections + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < ceiling:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        soft = ceiling
    if soft < wanted:
        log.warning(
            "SHOP_MAX_CONNECTIONS=%d needs about %d open files, but the limit is %d: "
            "raise it (ulimit -n, LimitNOFILE=) or lower SHOP_MAX_CONNECTIONS",
            max_connections, wanted, soft,
        )  # fmt: skip


class MetricsListener:
    """``/metrics`` on its own port (``SHOP_METRICS_PORT``), in the server's event loop.

    Its connections have their own :class:`ServerState`, so they neither count towards
    the public port's ``SHOP_MAX_CONNECTIONS`` nor are refused by it: a flood of public
    connections does not stop the scrapes that show it. Requests see the main app's
    lifespan state, which ``app.metrics.metrics`` reads.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        self.config = config
        self.server_state = ServerState()
        self._server: asyncio.Server | None = None

    async def bind(self, app_state: dict[str, Any]) -> None:
        """Listens on the port (raising ``OSError`` if it cannot), not accepting yet."""
        config = self.config
        if not config.loaded:
            config.load()
        protocol = cast(type[HttpToolsProtocol], config.http_protocol_class)

        def connection() -> HttpToolsProtocol:
            return protocol(config=config, server_state=self.server_state, app_state=app_state)

        self._server = await asyncio.get_running_loop().create_server(
            connection, config.host, config.port, backlog=config.backlog, start_serving=False
        )

    async def start_serving(self) -> None:
        if self._server is not None:
            await self._server.start_serving()

    def close(self) -> None:
        """Stops listening; idle connections close now, a scrape in flight when answered."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
