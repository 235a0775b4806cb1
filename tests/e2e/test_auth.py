"""Bearer tokens against real servers: the token command, sockets, expiry, idempotency scopes."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.auth import SECRET_FILE
from domain.identity import ADMIN_ROLE
from tests.e2e import forkserver
from tests.e2e.conftest import (
    SECRET,
    Client,
    Server,
    admin_token,
    bearer,
    customer_token,
)
from tests.e2e.test_shop_api import customer, place, product
from tests.unit.test_auth import JwksServer, ec_jwk, rsa_jwk, serve_jwks

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"
PROTOCOLS = [TRANSPORT_WS, LEGACY_WS]
FORBIDDEN_CLOSE = 4403
WITHIN = 15.0

CREATE_PRODUCT = """mutation($sku: String!) {
  createProduct(input: {sku: $sku, name: $sku, category: "c", priceCents: 100}) {
    success id version errors { code message } } }"""
CUSTOMER = "query($id: ID!, $v: Version) { customer(id: $id, minVersion: $v) { id name } }"
DASHBOARD_UPDATED = "subscription { dashboardUpdated { productCount } }"
PRODUCT_UPDATED = "subscription($id: ID!) { productUpdated(id: $id) { id } }"
ORDER_UPDATED = """subscription($id: ID!, $v: Version) {
  orderUpdated(id: $id, minVersion: $v) { id status version } }"""
PLACE_WITH_KEY = """mutation($customer: ID!, $product: ID!, $key: String) {
  placeOrder(input: {customerId: $customer, lines: [{productId: $product, quantity: 1}]},
             idempotencyKey: $key) {
    success id version errors { code field message } } }"""


def expired_token(subject: str = "admin", roles: tuple[str, ...] = (ADMIN_ROLE,)) -> str:
    now = int(time.time())
    claims = {"sub": subject, "roles": list(roles), "iat": now - 120, "exp": now - 60}
    return jwt.encode(claims, SECRET, algorithm="HS256")


# The token command ------------------------------------------------------------------------


def token_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return forkserver.run(["token", *args], env, timeout=60)


def printed_token(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("# "), result.stderr
    lines = result.stdout.splitlines()
    assert lines, result.stdout
    token = lines[-1].strip()
    assert token.count(".") == 2, result.stdout
    return token


async def create_product(client: Client, sku: str) -> dict[str, Any]:
    result: dict[str, Any] = (await client.data(CREATE_PRODUCT, {"sku": sku}))["createProduct"]
    return result


async def test_the_token_command_mints_tokens_the_server_accepts(
    server: Server, server_env: dict[str, str], client: Client
) -> None:
    issued = token_command(server_env, "--admin")
    admin = printed_token(issued)
    assert "admin token for sub 'admin'" in issued.stderr
    created = await create_product(client.as_(admin), "CLI-1")
    assert created["success"], created
    # The control: without a token the same mutation is refused.
    refused = await create_product(client.as_(None), "CLI-2")
    assert [e["code"] for e in refused["errors"]] == ["UNAUTHENTICATED"]

    ada = await customer(client, "cli@example.org", "Ada")
    issued = token_command(server_env, "--customer", ada["id"], "--ttl", "60")
    mine = printed_token(issued)
    claims = jwt.decode(mine, SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["roles"], claims["exp"] - claims["iat"]) == (
        ada["id"], ["customer"], 60
    )  # fmt: skip
    me = await client.as_(mine).data(CUSTOMER, {"id": ada["id"], "v": ada["version"]})
    assert me["customer"] == {"id": ada["id"], "name": "Ada"}
    # A customer token is not an admin's.
    forbidden = await create_product(client.as_(mine), "CLI-3")
    assert [e["code"] for e in forbidden["errors"]] == ["FORBIDDEN"]

    neither = token_command(server_env)
    assert neither.returncode == 2
    assert "exactly one of --admin and --customer" in neither.stderr
    assert neither.stdout == ""


def without_secret(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.upper().startswith("SHOP_AUTH_")}


@asynccontextmanager
async def own_server(env: dict[str, str], log: Path) -> AsyncIterator[Server]:
    server = Server(env, log)
    try:
        yield server.start()
    finally:
        server.stop()


async def test_without_configured_keys_the_server_and_the_command_share_a_created_secret(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    env = without_secret(server_env)
    secret_file = Path(env["SHOP_DATA_DIR"]) / SECRET_FILE
    assert not secret_file.exists()
    async with (
        own_server(env, tmp_path / "server.log") as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        assert secret_file.exists()
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        secret = secret_file.read_text().strip()
        assert len(secret) >= 32

        token = printed_token(token_command(env, "--admin"))
        assert jwt.decode(token, secret, algorithms=["HS256"])["roles"] == ["admin"]
        created = await create_product(Client(http, token), "DEV-1")
        assert created["success"], created
        # The shared e2e secret is not this server's: its tokens are refused.
        refused = await create_product(Client(http, admin_token()), "DEV-2")
        assert [e["code"] for e in refused["errors"]] == ["UNAUTHENTICATED"]
        assert "Signature verification failed" in refused["errors"][0]["message"]
    assert secret_file.read_text().strip() == secret  # the secret outlives the server


def test_with_a_jwks_url_and_no_secret_the_command_refuses(
    server_env: dict[str, str],
) -> None:
    env = {
        **without_secret(server_env),
        "SHOP_AUTH_JWKS_URL": "http://127.0.0.1:9/.well-known/jwks.json",
    }
    result = token_command(env, "--admin")
    assert result.returncode == 2
    assert "SHOP_AUTH_JWKS_URL is set" in result.stderr
    assert result.stdout == ""
    assert not (Path(env["SHOP_DATA_DIR"]) / SECRET_FILE).exists()
    # With a secret as well, it signs with the secret.
    both = token_command({**env, "SHOP_AUTH_SECRET": SECRET}, "--customer", "c-1")
    assert jwt.decode(printed_token(both), SECRET, algorithms=["HS256"])["sub"] == "c-1"


# A provider's keys (JWKS) ---------------------------------------------------------------------


@asynccontextmanager
async def provider_server(
    server_env: dict[str, str], tmp_path: Path, jwks: JwksServer
) -> AsyncIterator[tuple[Server, Client]]:
    env = {**without_secret(server_env), "SHOP_AUTH_JWKS_URL": jwks.url}
    async with (
        own_server(env, tmp_path / "server.log") as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        yield server, Client(http, None)


PUBLIC_AND_PROTECTED = """query($v: Version) {
  products(first: 1, minVersion: $v) { totalCount }
  customer(id: "nobody") { id } }"""


async def test_a_server_with_a_jwks_url_accepts_the_providers_tokens(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    exp = int(time.time()) + 600
    admin = {"sub": "ops", "roles": ["admin"], "exp": exp}
    with serve_jwks() as jwks:
        jwks.publish(rsa_jwk(rsa_key, "r1"), ec_jwk(ec_key, "e1"))
        async with provider_server(server_env, tmp_path, jwks) as (server, client):
            by_rsa = jwt.encode(admin, rsa_key, algorithm="RS256", headers={"kid": "r1"})
            created = await create_product(client.as_(by_rsa), "IDP-1")
            assert created["success"], created
            by_ec = jwt.encode(admin, ec_key, algorithm="ES256", headers={"kid": "e1"})
            async with socket(server, TRANSPORT_WS) as ws:
                await init(ws, bearer(by_ec))
                await assert_admin_socket(ws, TRANSPORT_WS)
            # No secret is configured: HS256, even signed with the e2e secret, is refused.
            body = await client.as_(admin_token()).post(
                PUBLIC_AND_PROTECTED, {"v": created["version"]}
            )
            assert body["data"]["products"]["totalCount"] == 1
            assert [e["extensions"]["code"] for e in body["errors"]] == ["UNAUTHENTICATED"]
            assert "tokens signed with 'HS256' are not accepted" in body["errors"][0]["message"]
        assert not (Path(server_env["SHOP_DATA_DIR"]) / SECRET_FILE).exists()
        assert jwks.requests == 1


async def test_a_provider_without_usable_keys_refuses_tokens_and_serves_public_fields(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(
        {"sub": "ops", "roles": ["admin"], "exp": int(time.time()) + 600},
        rsa_key, algorithm="RS256", headers={"kid": "r1"},
    )  # fmt: skip
    with serve_jwks() as jwks:  # publishes {"keys": []}
        async with provider_server(server_env, tmp_path, jwks) as (server, client):
            response = await client.http.post(
                "/graphql", json={"query": PUBLIC_AND_PROTECTED}, headers=bearer(token)
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["data"]["products"]["totalCount"] == 0
            assert [e["extensions"]["code"] for e in body["errors"]] == ["UNAUTHENTICATED"]
            async with socket(server, TRANSPORT_WS) as ws:
                await init(ws, bearer(token))
                await assert_closed_forbidden(ws, TRANSPORT_WS, "unavailable")


# WebSockets ---------------------------------------------------------------------------------


async def receive(ws: ClientConnection, within: float = WITHIN) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), within))
        if message["type"] != "ka":  # graphql-ws keep-alives
            return message


@asynccontextmanager
async def socket(
    server: Server, protocol: str, headers: dict[str, str] | None = None
) -> AsyncIterator[ClientConnection]:
    async with connect(
        server.ws_url,
        subprotocols=[protocol],  # type: ignore[list-item]
        additional_headers=headers,
        open_timeout=10,
    ) as ws:
        yield ws


async def init(ws: ClientConnection, payload: dict[str, Any] | None) -> None:
    message: dict[str, Any] = {"type": "connection_init"}
    if payload is not None:
        message["payload"] = payload
    await ws.send(json.dumps(message))


async def start(
    ws: ClientConnection,
    protocol: str,
    query: str,
    variables: dict[str, Any] | None = None,
    operation: str = "1",
) -> None:
    kind = "subscribe" if protocol == TRANSPORT_WS else "start"
    payload = {"query": query, "variables": variables or {}}
    await ws.send(json.dumps({"id": operation, "type": kind, "payload": payload}))


def codes(message: dict[str, Any]) -> list[str | None]:
    """The error codes of an error, or of a data message carrying errors."""
    payload = message["payload"]
    errors = payload if isinstance(payload, list) else payload.get("errors") or [payload]
    return [(error.get("extensions") or {}).get("code") for error in errors]


async def assert_admin_socket(ws: ClientConnection, protocol: str) -> None:
    """The socket is acknowledged and may run an admin-only subscription."""
    assert (await receive(ws))["type"] == "connection_ack"
    await start(ws, protocol, DASHBOARD_UPDATED)
    message = await receive(ws)
    assert message["type"] in ("next", "data"), message
    assert "errors" not in message["payload"], message
    assert isinstance(message["payload"]["data"]["dashboardUpdated"]["productCount"], int)


async def assert_closed_forbidden(ws: ClientConnection, protocol: str, why: str) -> None:
    if protocol == LEGACY_WS:
        error = await receive(ws)
        assert error["type"] == "connection_error", error
        assert why in error["payload"]["message"], error
    with pytest.raises(ConnectionClosed) as closed:
        await receive(ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == FORBIDDEN_CLOSE
    assert why in closed.value.rcvd.reason


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_socket_authenticates_by_its_init_payload_or_upgrade_header(
    server: Server, protocol: str
) -> None:
    token = f"Bearer {admin_token()}"
    payloads: list[dict[str, Any]] = [
        {"Authorization": token},
        {"authorization": token},
        {"AUTHORIZATION": token},
        {"headers": {"Authorization": token}},  # as Apollo's clients send it
    ]
    for payload in payloads:
        async with socket(server, protocol) as ws:
            await init(ws, payload)
            await assert_admin_socket(ws, protocol)
    async with socket(server, protocol, headers={"Authorization": token}) as ws:
        await init(ws, None)
        await assert_admin_socket(ws, protocol)
    async with socket(server, protocol, headers={"Authorization": token}) as ws:
        await init(ws, {})
        await assert_admin_socket(ws, protocol)

    # The control: a socket without a token is anonymous, and refused the admin's feed.
    async with socket(server, protocol) as ws:
        await init(ws, {})
        assert (await receive(ws))["type"] == "connection_ack"
        await start(ws, protocol, DASHBOARD_UPDATED)
        assert codes(await receive(ws)) == ["UNAUTHENTICATED"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_bad_token_closes_the_socket_with_4403(server: Server, protocol: str) -> None:
    forged = jwt.encode(
        {"sub": "admin", "roles": ["admin"], "exp": int(time.time()) + 600},
        "not-the-servers-secret-0123456789abcdef",
        algorithm="HS256",
    )
    cases: list[tuple[dict[str, Any] | None, dict[str, str] | None, str]] = [
        ({"Authorization": f"Bearer {forged}"}, None, "Signature verification failed"),
        ({"authorization": "Bearer garbage"}, None, "it is not a JWT"),
        ({"Authorization": f"Bearer {expired_token()}"}, None, "it has expired"),
        ({"Authorization": "Basic YWRtaW46YWRtaW4="}, None, "must be 'Bearer <token>'"),
        (None, {"Authorization": f"Bearer {forged}"}, "Signature verification failed"),
        ({}, {"Authorization": "Bearer garbage"}, "it is not a JWT"),
    ]
    for payload, headers, why in cases:
        async with socket(server, protocol, headers) as ws:
            await init(ws, payload)
            await assert_closed_forbidden(ws, protocol, why)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_customer_may_not_follow_the_dashboard(
    server: Server, client: Client, protocol: str
) -> None:
    ada = await customer(client, "dash@example.org")
    async with socket(server, protocol) as ws:
        await init(ws, bearer(customer_token(ada["id"])))
        assert (await receive(ws))["type"] == "connection_ack"
        await start(ws, protocol, DASHBOARD_UPDATED)
        message = await receive(ws)
        assert codes(message) == ["FORBIDDEN"], message


# Expiry -------------------------------------------------------------------------------------


async def follow_until_expiry(
    server: Server, protocol: str, order: dict[str, Any], who: str, product_id: str
) -> None:
    # Expires in 4 to 5 s (exp is whole seconds), minted just before it is used: at least
    # 3 s more than a socket takes to subscribe and hear back, even on a busy machine.
    token = customer_token(who, ttl=5)
    expires_at = jwt.decode(token, SECRET, algorithms=["HS256"])["exp"]
    async with socket(server, protocol) as ws:
        await init(ws, bearer(token))
        assert (await receive(ws))["type"] == "connection_ack"
        await start(ws, protocol, ORDER_UPDATED, {"id": order["id"], "v": order["version"]})
        first = await receive(ws)
        assert first["type"] in ("next", "data"), first
        assert first["payload"]["data"]["orderUpdated"] == {
            "id": order["id"], "status": "PLACED", "version": order["version"]
        }  # fmt: skip
        assert time.time() < expires_at  # else the test proves nothing
        ended = await receive(ws, within=expires_at - time.time() + WITHIN)
        assert time.time() >= expires_at - 0.05, "the subscription ended before the token expired"
        assert codes(ended) == ["UNAUTHENTICATED"], ended
        errors = ended["payload"] if isinstance(ended["payload"], list) else None
        errors = errors or ended["payload"].get("errors") or [ended["payload"]]
        assert "expired" in errors[0]["message"]
        if ended["type"] != "error":  # an error message ends the operation by itself
            completed = await receive(ws)
            assert (completed["type"], completed["id"]) == ("complete", "1"), completed
        # The socket stays open; what needs the token is refused, what does not still runs.
        await start(ws, protocol, ORDER_UPDATED, {"id": order["id"]}, operation="2")
        again = await receive(ws)
        assert (again["id"], codes(again)) == ("2", ["UNAUTHENTICATED"]), again
        await start(ws, protocol, PRODUCT_UPDATED, {"id": product_id}, operation="3")
        public = await receive(ws)
        assert public["id"] == "3", public
        assert public["payload"]["data"]["productUpdated"]["id"] == product_id, public


async def test_a_subscription_ends_unauthenticated_when_its_token_expires(
    server: Server, client: Client
) -> None:
    mug, ada = await product(client, "EXP-MUG", 10), await customer(client, "exp@example.org")
    order = await place(client, ada["id"], mug["id"])
    assert order["success"], order
    await asyncio.gather(
        *(
            follow_until_expiry(server, protocol, order, ada["id"], mug["id"])
            for protocol in PROTOCOLS
        )
    )


async def test_an_expired_token_is_refused_where_needed_and_public_fields_still_answer(
    client: Client,
) -> None:
    mug, ada = await product(client, "PUB-MUG", 3), await customer(client, "pub@example.org")
    query = """query($id: ID!, $customer: ID!, $v: Version) {
      product(id: $id, minVersion: $v) { id sku }
      customer(id: $customer, minVersion: $v) { id } }"""
    variables = {"id": mug["id"], "customer": ada["id"], "v": ada["version"]}
    # The control: with a live token both fields answer.
    live = await client.as_(customer_token(ada["id"])).data(query, variables)
    assert live["customer"] == {"id": ada["id"]}
    for token in (expired_token(ada["id"], ("customer",)), expired_token()):
        body = await client.as_(token).post(query, variables)
        assert body["data"]["product"] == {"id": mug["id"], "sku": mug["sku"]}
        assert body["data"]["customer"] is None
        [error] = body["errors"]
        assert error["path"] == ["customer"]
        assert error["extensions"]["code"] == "UNAUTHENTICATED"
        assert "expired" in error["message"]


# Idempotency keys are per caller -------------------------------------------------------------


async def test_an_idempotency_key_is_scoped_to_its_caller(client: Client) -> None:
    mug = await product(client, "IDEM-MUG", 10)
    ada = await customer(client, "ada@example.org", "Ada")
    bob = await customer(client, "bob@example.org", "Bob")
    as_ada = client.as_(customer_token(ada["id"]))
    as_bob = client.as_(customer_token(bob["id"]))

    async def order(who: Client, customer_id: str, key: str = "K-1") -> dict[str, Any]:
        variables = {"customer": customer_id, "product": mug["id"], "key": key}
        result: dict[str, Any] = (await who.data(PLACE_WITH_KEY, variables))["placeOrder"]
        return result

    first = await order(as_ada, ada["id"])
    assert first["success"], first
    theirs = await order(as_bob, bob["id"])
    assert theirs["success"], theirs
    assert theirs["errors"] == []
    assert theirs["id"] != first["id"]
    assert theirs["version"] > first["version"]

    again = await order(as_ada, ada["id"])
    assert (again["success"], again["id"], again["version"]) == (
        True,
        first["id"],
        first["version"],
    )
    bob_again = await order(as_bob, bob["id"])
    assert (bob_again["id"], bob_again["version"]) == (theirs["id"], theirs["version"])
    # Within one caller, the key still guards against another command.
    reused = (
        await as_ada.data(
            'mutation($id: ID!) { renameCustomer(id: $id, name: "Ada L", '
            'idempotencyKey: "K-1") { success errors { code field } } }',
            {"id": ada["id"]},
        )
    )["renameCustomer"]
    assert reused == {
        "success": False, "errors": [{"code": "IDEMPOTENCY_KEY_REUSED", "field": "idempotencyKey"}]
    }  # fmt: skip

    # Bob's orders: his own, not Ada's.
    history = await as_bob.data(
        """query($id: ID!, $v: Version) {
             orderHistory(customerId: $id, first: 10, minVersion: $v) {
               totalCount edges { node { id } } } }""",
        {"id": bob["id"], "v": bob_again["version"]},
    )
    assert history["orderHistory"]["totalCount"] == 1
    assert [e["node"]["id"] for e in history["orderHistory"]["edges"]] == [theirs["id"]]
    # An admin's key K-1 is the admin's own, too.
    for_ada = await order(client, ada["id"])
    assert for_ada["success"], for_ada
    assert for_ada["id"] not in (first["id"], theirs["id"])
