"""An anonymous caller against a real server process: what it sends must not grow the
server's memory, flood its log, run operators, or hold it busy.

One server for the module, with small per-client limits; each test measures the server
from outside (its RSS from /proc, the bytes of its log), as an attacker's victim would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.conftest import Client, Server, admin_token, module_server, rss

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
CONSISTENCY_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def hostile(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with module_server(
        tmp_path_factory, mongo_url, "hostile",
        LOG_LEVEL="INFO",
        SHOP_ANONYMOUS_SIGNUP_BURST="3",
        SHOP_ANONYMOUS_SIGNUPS_PER_MINUTE="1",
        SHOP_ANONYMOUS_WAITS_PER_CLIENT="5",
        SHOP_CONSISTENCY_TIMEOUT=str(CONSISTENCY_TIMEOUT),
    ) as server:  # fmt: skip
        yield server


@pytest.fixture
async def anonymous(hostile: Server) -> AsyncIterator[Client]:
    async with httpx.AsyncClient(base_url=hostile.url, timeout=60) as http:
        yield Client(http, token=None)


def server_rss(server: Server) -> int:
    assert server.process is not None
    return rss(server.process.pid)


def log_size(server: Server) -> int:
    return server.log.stat().st_size


def new_log(server: Server, since: int) -> str:
    with server.log.open("rb") as log:
        log.seek(since)
        return log.read().decode(errors="replace")


async def raw_post(server: Server, body: bytes) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        return await http.post(
            "/graphql", content=body, headers={"content-type": "application/json"}
        )


async def create_products(client: Client, names: list[str]) -> int:
    version = 0
    for name in names:
        result = (
            await client.data(
                """mutation($input: CreateProductInput!) {
                  createProduct(input: $input) { success version errors { code message } }
                }""",
                {
                    "input": {
                        "sku": f"{name}-{uuid.uuid4().hex[:8]}",
                        "name": name,
                        "category": "hostile",
                        "priceCents": 100,
                        "initialStock": 1,
                    }
                },
            )
        )["createProduct"]
        assert result["success"], result
        version = result["version"]
    return version


async def test_reads_of_made_up_keys_leave_memory_bounded(
    hostile: Server, anonymous: Client
) -> None:
    """1,200 ids of 250,000 bytes grew the server by ~290 MiB: every miss was cached,
    charged 200 bytes whatever its key's size."""
    await anonymous.post('{ product(id: "warm-up") { id } }')
    before = server_rss(hostile)
    huge = "x" * 200_000
    query = "query($id: ID!) { product(id: $id) { id } }"
    for n in range(400):
        answer = await anonymous.post(query, {"id": f"{n}-{huge}"})
        assert answer["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", answer
    for _ in range(500):  # well-formed ids of products that do not exist
        answer = await anonymous.post(query, {"id": str(uuid.uuid4())})
        assert answer == {"data": {"product": None}}
    assert server_rss(hostile) - before < 40 * MIB


async def test_comment_padded_documents_leave_memory_bounded(
    hostile: Server, anonymous: Client
) -> None:
    """Comments were no tokens, so 1,100 documents of 250 KB passed the token limit and
    were all kept in the parse cache: RSS 291 → 882 MiB. Now a document is at most
    64 K characters, and the cache is bounded in bytes."""
    padding = ("# " + "x" * 998 + "\n") * 60  # under SHOP_MAX_DOCUMENT_LENGTH

    async def send(documents: range) -> None:
        for n in documents:
            answer = await anonymous.post(f"# {n}\n{padding}{{ __typename }}")
            assert answer == {"data": {"__typename": "Query"}}

    await send(range(400))  # the cache full (16 MiB), the allocator's free lists warm
    before = server_rss(hostile)
    await send(range(400, 1000))  # 36 MB more of distinct documents: kept, they grew it
    assert server_rss(hostile) - before < 24 * MIB


async def test_a_cursor_never_runs_an_operator(hostile: Server, anonymous: Client) -> None:
    await create_products(Client(anonymous.http), ["cursor-apple", "cursor-cherry"])
    query = (
        "query($after: String) { products(first: 10, after: $after) { edges { node { name } } } }"
    )
    operators: list[Any] = [{"$regex": "^c"}, {"$in": ["cursor-apple"]}, {"$gt": ""}, True, None]
    for operator in operators:
        cursor = base64.urlsafe_b64encode(json.dumps(["NAME_ASC", operator, ""]).encode())
        answer = await anonymous.post(query, {"after": cursor.decode()})
        assert "data" in answer
        assert answer["data"] is None or answer["data"]["products"] is None, answer
        [error] = answer["errors"]
        assert error["extensions"]["code"] == "BAD_USER_INPUT", answer
    long = base64.urlsafe_b64encode(json.dumps(["NAME_ASC", "a" * 5000, ""]).encode())
    answer = await anonymous.post(query, {"after": long.decode()})
    assert answer["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", answer


async def test_a_long_document_is_refused_before_it_is_parsed(anonymous: Client) -> None:
    answer = await anonymous.post(("# " + "x" * 998 + "\n") * 200 + "{ __typename }")
    [error] = answer["errors"]
    assert error["extensions"]["limit"] == "SHOP_MAX_DOCUMENT_LENGTH", error


async def test_a_long_search_is_refused_before_the_store(
    hostile: Server, anonymous: Client
) -> None:
    """A 250 KB search took 6.9 s of the read store with 20 products."""
    query = "query($s: String) { products(filter: {search: $s}) { totalCount } }"
    answer = await anonymous.post(query, {"s": "mug " * 60_000})
    [error] = answer["errors"]
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "argument": "filter.search"}
    assert (await anonymous.post(query, {"s": "m" * 100}))["data"]["products"]["totalCount"] == 0


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 1_000 + b"]" * 1_000,
        b'{"query": "{ __typename }", "variables": {"a": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}}",
        b'{"query": "{ __typename }", "variables": {"a": "\xff\xfe"}}',
        b"null",
        b"5",
        b'"a string"',
        b'{"query": "query($id: ID!) { product(id: $id) { id } }", "variables": {"id": "\\ud800"}}',
        b'{"query": "{ product(id: \\"\\udfff\\") { id } }"}',
    ],
    ids=[
        "nested-1000",
        "nested-100000",
        "invalid-utf8",
        "null",
        "number",
        "string",
        "lone-surrogate-variable",
        "lone-surrogate-document",
    ],
)
async def test_a_malformed_body_answers_a_json_400_and_one_short_log_line(
    hostile: Server, body: bytes
) -> None:
    since = log_size(hostile)
    response = await raw_post(hostile, body)
    assert response.status_code == 400, response.text
    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == "BAD_REQUEST", error
    logged = new_log(hostile, since)
    assert "Traceback" not in logged
    assert len(logged.splitlines()) <= 1, logged


async def test_subscriptions_that_can_never_succeed_end_at_once_and_log_little(
    hostile: Server,
) -> None:
    """50 subscriptions to an id no store can hold retried every few seconds each,
    forever, logging a traceback each time: 3 MB of log in 30 s."""
    since = log_size(hostile)
    subscribe = "subscription($id: ID!) { productUpdated(id: $id) { id } }"
    async with connect(hostile.ws_url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        ids = ["not-an-id", "x" * 65, "\x00", str(uuid.uuid4())]
        for n in range(40):
            variables = {"id": ids[n % len(ids)]}
            message = {
                "id": str(n),
                "type": "subscribe",
                "payload": {"query": subscribe, "variables": variables},
            }
            await ws.send(json.dumps(message))
        ended: dict[str, str] = {}
        while len(ended) < 40:
            message = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if message["type"] in ("error", "next"):
                payload = message["payload"]
                errors = payload if message["type"] == "error" else payload.get("errors")
                assert errors, message
                ended[message["id"]] = errors[0]["extensions"]["code"]
        codes = {ended[str(n)] for n in range(0, 40, 4)}, {ended[str(n)] for n in range(1, 40, 4)}
        assert codes == ({"NOT_FOUND"}, {"BAD_USER_INPUT"})
        assert {ended[str(n)] for n in range(2, 40, 4)} == {"BAD_USER_INPUT"}
        assert {ended[str(n)] for n in range(3, 40, 4)} == {"NOT_FOUND"}
        # The socket itself stays usable.
        await ws.send(json.dumps({"type": "ping"}))
        while (message := json.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] != "pong":
            assert message["type"] == "complete", message
    assert len(new_log(hostile, since)) < 2_000


async def drain(ws: ClientConnection) -> None:
    """Reads until the server closes the socket (raising ConnectionClosed)."""
    while True:
        await asyncio.wait_for(ws.recv(), 10)


async def test_a_lone_surrogate_in_a_socket_message_closes_it_once(hostile: Server) -> None:
    since = log_size(hostile)
    subscribe = "subscription($id: ID!) { productUpdated(id: $id) { id } }"
    async with connect(hostile.ws_url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        for n in range(50):
            payload = {"query": subscribe, "variables": {"id": "\ud800" + str(n)}}
            await ws.send(json.dumps({"id": str(n), "type": "subscribe", "payload": payload}))
        with pytest.raises(ConnectionClosed) as closed:
            await drain(ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4400
    assert len(new_log(hostile, since)) < 2_000


async def test_anonymous_sign_ups_are_rate_limited_per_address(
    hostile: Server, anonymous: Client
) -> None:
    register = """mutation($input: RegisterCustomerInput!, $key: String) {
      registerCustomer(input: $input, idempotencyKey: $key) { success id errors { code message } }
    }"""

    def customer(n: int) -> dict[str, Any]:
        return {
            "email": f"rate-{n}-{uuid.uuid4().hex[:6]}@example.com",
            "name": "Rate",
            "address": {"line1": "1 Road", "city": "Town", "postalCode": "1", "country": "DE"},
        }

    answers = [
        (await anonymous.post(register, {"input": customer(n)}))["data"]["registerCustomer"]
        for n in range(5)
    ]
    assert [a["success"] for a in answers] == [True, True, True, False, False]
    assert [e["code"] for e in answers[3]["errors"]] == ["RATE_LIMITED"]
    assert "SHOP_ANONYMOUS_SIGNUPS_PER_MINUTE" in answers[3]["errors"][0]["message"]
    # Admins are known callers; another address has its own budget.
    admin = anonymous.as_(admin_token())
    assert (await admin.post(register, {"input": customer(9)}))["data"]["registerCustomer"][
        "success"
    ]
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(base_url=hostile.url, transport=transport, timeout=30) as other:
        elsewhere = Client(other, token=None)
        answer = (await elsewhere.post(register, {"input": customer(10)}))["data"]
        assert answer["registerCustomer"]["success"], answer


async def test_an_anonymous_retry_from_another_address_still_gets_its_first_answer(
    hostile: Server,
) -> None:
    """The contract's retry promise holds for a client whose address changed between
    its tries (a phone that moved networks); the key is the client's secret."""
    register = """mutation($input: RegisterCustomerInput!, $key: String) {
      registerCustomer(input: $input, idempotencyKey: $key) { success id version }
    }"""
    variables = {
        "input": {
            "email": f"replay-{uuid.uuid4().hex[:8]}@example.com",
            "name": "Replay",
            "address": {"line1": "1 Road", "city": "Town", "postalCode": "1", "country": "DE"},
        },
        "key": f"signup-{uuid.uuid4()}",
    }
    answers = []
    for address in ("127.0.0.3", "127.0.0.4"):
        transport = httpx.AsyncHTTPTransport(local_address=address)
        async with httpx.AsyncClient(base_url=hostile.url, transport=transport) as http:
            body = await Client(http, token=None).post(register, variables)
            answers.append(body["data"]["registerCustomer"])
    first, retry = answers
    assert first["success"]
    assert retry == first


async def test_a_forwarded_for_header_from_a_peer_that_is_no_proxy_is_not_the_address(
    hostile: Server,
) -> None:
    """Loopback peers were trusted as proxies: each X-Forwarded-For was a new address
    with a fresh sign-up budget."""
    register = """mutation($input: RegisterCustomerInput!) {
      registerCustomer(input: $input) { success errors { code } } }"""
    async with httpx.AsyncClient(base_url=hostile.url) as http:  # from 127.0.0.1
        client = Client(http, token=None)
        answers = []
        for n in range(5):
            variables = {
                "input": {
                    "email": f"forwarded-{n}-{uuid.uuid4().hex[:6]}@example.com",
                    "name": "Forwarded",
                    "address": {"line1": "1", "city": "T", "postalCode": "1", "country": "DE"},
                }
            }
            body = await client.post(register, variables, **{"X-Forwarded-For": f"10.1.0.{n}"})
            answers.append(body["data"]["registerCustomer"]["success"])
    # One budget (of 3, maybe spent by other tests already), not one per header.
    assert answers.count(True) <= 3
    assert answers[-1] is False


async def test_an_address_holds_only_so_many_min_version_waits(hostile: Server) -> None:
    query = "query($v: Version) { products(first: 1, minVersion: $v) { totalCount } }"
    far = {"v": 10**12}
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.5")
    async with (
        httpx.AsyncClient(base_url=hostile.url, transport=transport, timeout=30) as http,
        httpx.AsyncClient(base_url=hostile.url, timeout=30) as elsewhere,
    ):
        client = Client(http, token=None)
        answers = await asyncio.gather(*(client.post(query, far) for _ in range(8)))
        codes = sorted(a["errors"][0]["extensions"]["code"] for a in answers)
        assert codes == ["LIMIT_EXCEEDED"] * 3 + ["NOT_YET_CONSISTENT"] * 5
        # Another address, and a caller with a token, are not held back meanwhile.
        other = Client(elsewhere, token=None)
        admin = Client(elsewhere)
        mixed = await asyncio.gather(
            *(client.post(query, far) for _ in range(5)),
            other.post(query, far),
            admin.post(query, far),
        )
        assert [a["errors"][0]["extensions"]["code"] for a in mixed[5:]] == [
            "NOT_YET_CONSISTENT"
        ] * 2
