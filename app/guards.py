"""Transport limits, before any GraphQL work: request body size, WebSocket message size,
and open WebSockets per process (pure ASGI, so nothing is buffered past a limit)."""

from __future__ import annotations

import asyncio
import contextlib
import json

from prometheus_client import Gauge
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Close codes: 1009 "message too big" (RFC 6455), 1013 "try again later".
# A refused body is answered at once, then the rest of it is read and dropped (never
# kept) up to this much, so that a client, which sends its whole body before reading
# the answer, gets the 413 rather than a connection reset; past it (or after
# DRAIN_SECONDS) the connection is simply closed.
DRAIN_BYTES = 32 * 1024 * 1024
DRAIN_SECONDS = 10.0
MESSAGE_TOO_BIG = 1009
OPEN_SOCKETS = Gauge("shop_open_websockets", "WebSockets open in this process", registry=None)
TRY_AGAIN_LATER = 1013


class _BodyTooLarge(Exception):
    pass


def _limit_error(message: str, setting: str, maximum: int) -> bytes:
    error = {
        "message": message,
        "extensions": {"code": "LIMIT_EXCEEDED", "limit": setting, "maximum": maximum},
    }
    return json.dumps({"errors": [error]}).encode()


class TransportLimits:
    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, max_ws_message_bytes: int, max_sockets: int
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_ws_message_bytes = max_ws_message_bytes
        self.max_sockets = max_sockets
        self.open_sockets = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_body_bytes
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            # Refused before a byte of it reaches the app: answered, then read and dropped.
            await self._too_large(send, receive, received=0, ended=False)
            return
        received = 0
        started = False
        ended = False  # the body's last part has arrived: nothing is left to drain

        async def counted() -> Message:
            nonlocal received, ended
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                ended = not message.get("more_body", False)
                if received > limit:
                    raise _BodyTooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _BodyTooLarge:
            if not started:
                await self._too_large(send, receive, received=received, ended=ended)

    async def _too_large(self, send: Send, receive: Receive, received: int, ended: bool) -> None:
        """Answers 413 at once. Unless the body has ended, the answer is sent whole but
        left open (``more_body``) while the rest of the body is drained: its client
        reads it meanwhile, and the connection closes after (it is never kept alive
        with part of a body unread)."""
        body = _limit_error(
            f"the request body is over the limit of {self.max_body_bytes} bytes "
            "(SHOP_MAX_BODY_BYTES)",
            "SHOP_MAX_BODY_BYTES",
            self.max_body_bytes,
        )
        headers = [(b"content-type", b"application/json")]
        headers.append((b"content-length", str(len(body)).encode()))
        if not ended:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": not ended})
        if not ended:
            await _drain(receive, already=received)
            await send({"type": "http.response.body", "body": b""})

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.open_sockets >= self.max_sockets:
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.accept", "subprotocol": _first_protocol(scope)})
                reason = f"too many open sockets (limit {self.max_sockets}: SHOP_MAX_SOCKETS)"
                await send({"type": "websocket.close", "code": TRY_AGAIN_LATER, "reason": reason})
            return
        self.open_sockets += 1
        OPEN_SOCKETS.inc()
        closed = False

        async def checked() -> Message:
            nonlocal closed
            message = await receive()
            if message["type"] == "websocket.receive" and not closed:
                size = _size(message)
                if size > self.max_ws_message_bytes:
                    closed = True
                    reason = (
                        f"message over {self.max_ws_message_bytes} bytes "
                        "(SHOP_MAX_WS_MESSAGE_BYTES)"
                    )
                    await send(
                        {"type": "websocket.close", "code": MESSAGE_TOO_BIG, "reason": reason}
                    )
                    return {"type": "websocket.disconnect", "code": MESSAGE_TOO_BIG}
            return message

        async def guarded(message: Message) -> None:
            if not closed:  # nothing is sent on a socket this middleware closed
                await send(message)

        try:
            await self.app(scope, checked, guarded)
        finally:
            self.open_sockets -= 1
            OPEN_SOCKETS.dec()


async def _drain(receive: Receive, already: int) -> None:
    """Reads the rest of a refused body and drops it, until it ends, its client goes
    away, or DRAIN_BYTES or DRAIN_SECONDS are passed."""
    received = already
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            while received <= DRAIN_BYTES:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                received += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return


def _size(message: Message) -> int:
    text = message.get("text")
    if text is not None:
        return len(text.encode())
    return len(message.get("bytes") or b"")


def _first_protocol(scope: Scope) -> str | None:
    protocols = scope.get("subprotocols") or []
    return protocols[0] if protocols else None
