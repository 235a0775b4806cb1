"""Abuse limits against real servers: body and message sizes, open sockets, operations per
socket, document limits over HTTP and WebSocket, no batching, CORS and request ids.

Two servers for the module: ``limited`` with small transport limits and CORS for one
origin, ``plain`` on the defaults.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin, Subprotocol

from tests.e2e.conftest import Server, admin_token, bearer, module_server

MAX_BODY = 4096
MAX_WS_MESSAGE = 2048
MAX_SOCKETS = 2
MAX_OPERATIONS = 2
SHOP_ORIGIN = "http://shop.example"
OTHER_ORIGIN = "http://elsewhere.example"
TRANSPORT_WS = Subprotocol("graphql-transport-ws")
LEGACY_WS = Subprotocol("graphql-ws")
WITHIN = 15.0
MESSAGE_TOO_BIG, TRY_AGAIN_LATER = 1009, 1013
DASHBOARD_UPDATED = "subscription { dashboardUpdated { productCount version } }"
CREATE_PRODUCT = """mutation($sku: String!) {
  createProduct(input: {sku: $sku, name: "Batch", category: "c", priceCents: 100}) {
    success errors { code } } }"""


@pytest.fixture(scope="module")
def limited(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with module_server(
        tmp_path_factory, mongo_url, "limits",
        SHOP_MAX_BODY_BYTES=str(MAX_BODY),
        SHOP_MAX_WS_MESSAGE_BYTES=str(MAX_WS_MESSAGE),
        SHOP_MAX_SOCKETS=str(MAX_SOCKETS),
        SHOP_MAX_SUBSCRIPTIONS_PER_CONNECTION=str(MAX_OPERATIONS),
        SHOP_CORS_ORIGINS=SHOP_ORIGIN,
    ) as server:  # fmt: skip
        yield server


@pytest.fixture(scope="module")
def plain(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with module_server(tmp_path_factory, mongo_url, "limits") as server:
        yield server


@asynccontextmanager
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=server.url,
        timeout=WITHIN,
        headers={**bearer(admin_token()), "Content-Type": "application/json"},
    ) as client:
        yield client


def limit_error(response: httpx.Response) -> dict[str, Any]:
    """The first error's extensions of a GraphQL-shaped JSON answer."""
    body = response.json()
    assert isinstance(body.get("errors"), list), body
    assert body["errors"], body
    extensions: dict[str, Any] = body["errors"][0].get("extensions") or {}
    assert extensions.get("code") == "LIMIT_EXCEEDED", body
    assert extensions["limit"] in body["errors"][0]["message"], body
    return extensions


async def healthy(server: Server) -> None:
    async with http(server) as client:
        assert (await client.get("/healthz")).status_code == 200
        answer = await client.post("/graphql", json={"query": "{ __typename }"})
        assert answer.json() == {"data": {"__typename": "Query"}}


def query_of(size: int) -> dict[str, str]:
    """A valid query whose JSON body is exactly ``size`` bytes."""
    empty = len(json.dumps({"query": "{ __typename }"}))
    assert size >= empty
    return {"query": "{ __typename }" + " " * (size - empty)}


def body_of(size: int) -> bytes:
    body = json.dumps(query_of(size)).encode()
    assert len(body) == size
    return body


# The request body ----------------------------------------------------------------------------


async def test_a_body_over_the_limit_answers_413_naming_the_setting(limited: Server) -> None:
    async with http(limited) as client:
        at_limit = await client.post("/graphql", content=body_of(MAX_BODY))
        assert at_limit.status_code == 200, at_limit.text
        assert at_limit.json() == {"data": {"__typename": "Query"}}
        over = await client.post("/graphql", content=body_of(MAX_BODY + 1))
    assert over.status_code == 413, over.text
    assert over.headers["content-type"] == "application/json"
    assert limit_error(over) == {
        "code": "LIMIT_EXCEEDED", "limit": "SHOP_MAX_BODY_BYTES", "maximum": MAX_BODY,
    }  # fmt: skip
    assert re.fullmatch(r"[0-9a-f]{32}", over.headers["x-request-id"])


async def chunks(body: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_a_chunked_body_over_the_limit_answers_413(limited: Server) -> None:
    async with http(limited) as client:
        small = await client.post("/graphql", content=chunks(body_of(MAX_BODY)))
        assert small.request.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in small.request.headers
        assert small.json() == {"data": {"__typename": "Query"}}
        over = await client.post("/graphql", content=chunks(body_of(MAX_BODY + 1)))
    assert over.request.headers.get("transfer-encoding") == "chunked"
    assert over.status_code == 413, over.text
    assert limit_error(over)["limit"] == "SHOP_MAX_BODY_BYTES"


def _status_line(response: bytes) -> str:
    return response.split(b"\r\n", 1)[0].decode()


async def test_a_20_mb_body_is_refused_before_it_is_sent(limited: Server) -> None:
    """The headers declare 20 MB and no byte of the body follows: the whole answer comes
    anyway. Then the body is sent after all, and the server, still reading it, takes it
    all before it closes: no connection reset (before, it waited for the body up to its
    10 s drain timeout, answered and closed; this body then met a closed socket)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", limited.port)
    try:
        writer.write(
            b"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 20000000\r\n\r\n"
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WITHIN)
        assert _status_line(head) == "HTTP/1.1 413 Request Entity Too Large"
        assert re.search(rb"connection: close", head, re.IGNORECASE), head
        length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
        assert length is not None, head
        body = json.loads(await asyncio.wait_for(reader.readexactly(int(length[1])), WITHIN))
        assert body["errors"][0]["extensions"]["limit"] == "SHOP_MAX_BODY_BYTES"
        writer.write(b"x" * 20_000_000)
        await asyncio.wait_for(writer.drain(), WITHIN)
        assert await asyncio.wait_for(reader.read(), WITHIN) == b""  # closed, not reset
    finally:
        writer.close()
    await healthy(limited)


@functools.cache
def twenty_mb() -> bytes:
    return b'{"query": "{ __typename }", "padding": "' + b"x" * 20_000_000 + b'"}'


UPLOADS: dict[str, Callable[[], bytes | AsyncIterator[bytes]]] = {
    "declared": twenty_mb,
    "chunked": lambda: chunks(twenty_mb(), 65_536),
}


@pytest.mark.parametrize("upload", UPLOADS)
async def test_a_20_mb_upload_leaves_the_server_healthy(limited: Server, upload: str) -> None:
    async with http(limited) as client:
        status: int | str
        try:
            status = (await client.post("/graphql", content=UPLOADS[upload]())).status_code
        except httpx.TransportError as error:  # see the next test
            status = type(error).__name__
    assert status in (413, "ReadError", "WriteError", "RemoteProtocolError")
    await healthy(limited)


@pytest.mark.parametrize("upload", UPLOADS)
async def test_a_client_uploading_20_mb_reads_the_413(limited: Server, upload: str) -> None:
    async with http(limited) as client:
        answer = await client.post("/graphql", content=UPLOADS[upload]())
    assert answer.status_code == 413
    assert limit_error(answer)["limit"] == "SHOP_MAX_BODY_BYTES"


# WebSockets ----------------------------------------------------------------------------------


async def receive(ws: ClientConnection) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), WITHIN))
        if message["type"] not in ("ka", "ping", "pong"):
            return message


async def receive_for(ws: ClientConnection, id_: str, within: float = WITHIN) -> dict[str, Any]:
    """The next message about operation ``id_`` (others' are skipped)."""
    while (message := await asyncio.wait_for(receive(ws), within)).get("id") != id_:
        pass
    return message


async def closed(ws: ClientConnection) -> tuple[int | None, str | None]:
    """Waits for the server to close the socket; its close code and reason."""
    with pytest.raises(ConnectionClosed):
        await receive(ws)
    return ws.close_code, ws.close_reason


async def socket_once(
    server: Server, protocol: Subprotocol = TRANSPORT_WS, origin: str | None = None
) -> ClientConnection | None:
    """An acknowledged socket, or None if the server closed it for want of room."""
    ws = await connect(
        server.ws_url, subprotocols=[protocol], open_timeout=WITHIN,
        origin=Origin(origin) if origin else None,
    )  # fmt: skip
    try:
        await ws.send(json.dumps({"type": "connection_init", "payload": bearer(admin_token())}))
        ack = await receive(ws)
    except ConnectionClosed:
        assert ws.close_code == TRY_AGAIN_LATER, (ws.close_code, ws.close_reason)
        return None
    assert ack["type"] == "connection_ack", ack
    return ws


async def acknowledged(server: Server, protocol: Subprotocol = TRANSPORT_WS) -> ClientConnection:
    """An acknowledged socket, waiting for room while sockets that other tests closed are
    still counted by the server (at most 2 open on ``limited``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WITHIN
    while (ws := await socket_once(server, protocol)) is None:
        assert loop.time() < deadline, "no room for a socket"
        await asyncio.sleep(0.05)
    return ws


@asynccontextmanager
async def sockets(server: Server, count: int = 1) -> AsyncIterator[list[ClientConnection]]:
    opened: list[ClientConnection] = []
    try:
        for _ in range(count):
            opened.append(await acknowledged(server))
        yield opened
    finally:
        for ws in opened:
            await ws.close()


async def test_a_websocket_message_over_the_limit_closes_it_with_1009(limited: Server) -> None:
    async with sockets(limited) as [ws]:
        payload = {"query": DASHBOARD_UPDATED + " " * (MAX_WS_MESSAGE - 200)}
        fits = json.dumps({"id": "1", "type": "subscribe", "payload": payload})
        assert len(fits) <= MAX_WS_MESSAGE
        await ws.send(fits)
        assert (await receive(ws))["type"] == "next"
        payload = {"query": DASHBOARD_UPDATED + " " * MAX_WS_MESSAGE}
        await ws.send(json.dumps({"id": "2", "type": "subscribe", "payload": payload}))
        code, reason = await closed(ws)
    assert code == MESSAGE_TOO_BIG
    assert reason is not None
    assert "SHOP_MAX_WS_MESSAGE_BYTES" in reason


async def test_a_socket_over_the_limit_is_closed_with_1013_until_one_closes(
    limited: Server,
) -> None:
    async with sockets(limited, MAX_SOCKETS) as [first, _second]:
        third = await connect(limited.ws_url, subprotocols=[TRANSPORT_WS], open_timeout=WITHIN)
        code, reason = await closed(third)
        assert code == TRY_AGAIN_LATER
        assert reason is not None
        assert "SHOP_MAX_SOCKETS" in reason
        await first.close()
        # Room again once the server has seen the first one go.
        async with sockets(limited) as [again]:
            await again.send(
                json.dumps({"id": "1", "type": "subscribe", "payload": {"query": "{ __typename }"}})
            )
            assert (await receive(again))["payload"] == {"data": {"__typename": "Query"}}


async def test_operations_per_connection_are_limited_until_one_completes(
    limited: Server,
) -> None:
    async with sockets(limited) as [ws]:

        async def subscribe(id_: str) -> dict[str, Any]:
            payload = {"query": DASHBOARD_UPDATED}
            await ws.send(json.dumps({"id": id_, "type": "subscribe", "payload": payload}))
            return await receive_for(ws, id_)

        for id_ in ("1", "2"):
            first = await subscribe(id_)
            assert (first["type"], first["id"]) == ("next", id_), first
        refused = await subscribe("3")
        assert (refused["type"], refused["id"]) == ("error", "3"), refused
        [error] = refused["payload"]
        assert "SHOP_MAX_SUBSCRIPTIONS_PER_CONNECTION" in error["message"]
        assert error["extensions"] == {
            "code": "LIMIT_EXCEEDED", "limit": "SHOP_MAX_SUBSCRIPTIONS_PER_CONNECTION",
            "maximum": 2,
        }  # fmt: skip
        await ws.send(json.dumps({"id": "1", "type": "complete"}))
        accepted = await subscribe("4")
        assert (accepted["type"], accepted["id"]) == ("next", "4"), accepted


async def test_operations_per_connection_are_limited_on_the_legacy_protocol(
    limited: Server,
) -> None:
    ws = await acknowledged(limited, LEGACY_WS)
    try:

        async def start(id_: str) -> dict[str, Any]:
            payload = {"query": DASHBOARD_UPDATED}
            await ws.send(json.dumps({"id": id_, "type": "start", "payload": payload}))
            return await receive_for(ws, id_)

        for id_ in ("1", "2"):
            assert (await start(id_))["type"] == "data"
        refused = await start("3")
        assert (refused["type"], refused["id"]) == ("error", "3"), refused
        assert "SHOP_MAX_SUBSCRIPTIONS_PER_CONNECTION" in refused["payload"]["message"]
        assert refused["payload"]["extensions"] == {
            "code": "LIMIT_EXCEEDED", "limit": "SHOP_MAX_SUBSCRIPTIONS_PER_CONNECTION",
            "maximum": 2,
        }  # fmt: skip
        await ws.send(json.dumps({"id": "1", "type": "stop"}))
        assert (await receive_for(ws, "1"))["type"] == "complete"
        assert (await start("4"))["type"] == "data"
    finally:
        await ws.close()


# Document limits -----------------------------------------------------------------------------


DOCUMENTS = {
    "SHOP_MAX_TOKENS": "{ " + "__typename " * 2000 + "}",
    "SHOP_MAX_ALIASES": "{ " + " ".join(f"a{i}: dashboard {{ version }}" for i in range(31)) + " }",
    "SHOP_MAX_DEPTH": "{ " + "node { " * 12 + "id" + " }" * 12 + " }",
    "SHOP_MAX_COST": "{ "
    + " ".join(
        f"p{i}: products(first: 100) {{ edges {{ node {{ id name }} }} }}" for i in range(20)
    )
    + " }",
}


@pytest.mark.parametrize("setting", DOCUMENTS)
async def test_document_limits_answer_a_coded_error_over_http(plain: Server, setting: str) -> None:
    async with http(plain) as client:
        answer = await client.post("/graphql", json={"query": DOCUMENTS[setting]})
    assert answer.status_code == 200, answer.text
    assert "data" not in answer.json() or answer.json()["data"] is None
    assert limit_error(answer)["limit"] == setting


async def test_a_page_size_in_a_variable_is_costed_over_http(plain: Server) -> None:
    page = "products(first: $n) { edges { node { id name sku description category priceCents } } }"
    query = "query($n: Int!) { " + " ".join(f"p{i}: {page}" for i in range(10)) + " }"
    async with http(plain) as client:
        refused = await client.post("/graphql", json={"query": query, "variables": {"n": 100}})
        answered = await client.post("/graphql", json={"query": query, "variables": {"n": 5}})
    assert limit_error(refused)["limit"] == "SHOP_MAX_COST"
    assert "errors" not in answered.json(), answered.json()
    assert set(answered.json()["data"]) == {f"p{i}" for i in range(10)}


ALIASED_SUBSCRIPTION = (
    "subscription { dashboardUpdated { " + " ".join(f"v{i}: version" for i in range(31)) + " } }"
)


async def test_document_limits_stop_operations_over_websockets(plain: Server) -> None:
    async with sockets(plain) as [ws]:
        payload = {"query": ALIASED_SUBSCRIPTION}
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
        answer = await receive_for(ws, "1")
        assert answer["type"] != "next", answer  # not executed
        # The socket still serves what is within the limits.
        payload = {"query": DASHBOARD_UPDATED}
        await ws.send(json.dumps({"id": "2", "type": "subscribe", "payload": payload}))
        assert (await receive_for(ws, "2"))["type"] == "next"


@pytest.mark.parametrize(("protocol", "start"), [(TRANSPORT_WS, "subscribe"), (LEGACY_WS, "start")])
async def test_document_limits_answer_a_coded_error_over_websockets(
    plain: Server, protocol: Subprotocol, start: str
) -> None:
    ws = await acknowledged(plain, protocol)
    try:
        payload = {"query": ALIASED_SUBSCRIPTION}
        await ws.send(json.dumps({"id": "1", "type": start, "payload": payload}))
        answer = await receive_for(ws, "1", within=5)
    finally:
        await ws.close()
    assert answer["type"] == "error", answer
    errors = answer["payload"] if isinstance(answer["payload"], list) else [answer["payload"]]
    assert errors[0]["extensions"]["code"] == "LIMIT_EXCEEDED", answer
    assert errors[0]["extensions"]["limit"] == "SHOP_MAX_ALIASES", answer


async def test_batches_are_not_executed(plain: Server) -> None:
    sku = f"batch-{uuid.uuid4().hex[:8]}"
    batch = [{"query": CREATE_PRODUCT, "variables": {"sku": sku}}, {"query": "{ __typename }"}]
    async with http(plain) as client:
        answer = await client.post("/graphql", json=batch)
        assert 400 <= answer.status_code < 500, answer.text
        # Not created by the batch: creating it now is no duplicate.
        created = await client.post(
            "/graphql", json={"query": CREATE_PRODUCT, "variables": {"sku": sku}}
        )
    assert created.json() == {"data": {"createProduct": {"success": True, "errors": []}}}


# CORS and request ids ------------------------------------------------------------------------


def preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }


async def test_cors_allows_the_configured_origin_only(limited: Server) -> None:
    async with httpx.AsyncClient(base_url=limited.url, timeout=WITHIN) as client:
        allowed = await client.options("/graphql", headers=preflight(SHOP_ORIGIN))
        other = await client.options("/graphql", headers=preflight(OTHER_ORIGIN))
        simple = await client.post(
            "/graphql", json={"query": "{ __typename }"}, headers={"Origin": SHOP_ORIGIN}
        )
        simple_other = await client.post(
            "/graphql", json={"query": "{ __typename }"}, headers={"Origin": OTHER_ORIGIN}
        )
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["access-control-allow-origin"] == SHOP_ORIGIN
    allowed_headers = allowed.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed_headers.replace(" ", "").split(",")
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "access-control-allow-origin" not in other.headers
    assert simple.headers["access-control-allow-origin"] == SHOP_ORIGIN
    assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
    assert "access-control-allow-origin" not in simple_other.headers


async def test_without_the_setting_no_cors_headers(plain: Server) -> None:
    async with httpx.AsyncClient(base_url=plain.url, timeout=WITHIN) as client:
        asked = await client.options("/graphql", headers=preflight(SHOP_ORIGIN))
        simple = await client.post(
            "/graphql", json={"query": "{ __typename }"}, headers={"Origin": SHOP_ORIGIN}
        )
    assert simple.json() == {"data": {"__typename": "Query"}}
    for response in (asked, simple):
        assert not [h for h in response.headers if h.lower().startswith("access-control-")]


async def test_websockets_from_other_origins_are_refused(limited: Server, plain: Server) -> None:
    ws = await socket_once(limited, origin=SHOP_ORIGIN)
    assert ws is not None
    await ws.close()
    for server, origin in ((limited, OTHER_ORIGIN), (plain, SHOP_ORIGIN)):
        with pytest.raises(InvalidStatus) as refused:
            await socket_once(server, origin=origin)
        assert refused.value.response.status_code == 403


async def test_every_answer_has_a_request_id_and_a_good_one_is_echoed(plain: Server) -> None:
    query = {"query": "{ __typename }"}
    async with http(plain) as client:
        fresh = await client.post("/graphql", json=query)
        again = await client.post("/graphql", json=query)
        echoed = await client.post("/graphql", json=query, headers={"X-Request-Id": "web-1.a:b_C"})
        too_long = await client.post("/graphql", json=query, headers={"X-Request-Id": "a" * 65})
        odd = await client.post("/graphql", json=query, headers={"X-Request-Id": "a b<script>"})
        health = await client.get("/healthz", headers={"X-Request-Id": "probe-7"})
    for response in (fresh, again, too_long, odd):
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"]), response.headers
    assert fresh.headers["x-request-id"] != again.headers["x-request-id"]
    assert echoed.headers["x-request-id"] == "web-1.a:b_C"
    assert health.headers["x-request-id"] == "probe-7"
    assert len(echoed.headers.get_list("x-request-id")) == 1
