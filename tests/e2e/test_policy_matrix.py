"""Who may call what, end to end: every root field for every kind of caller, on one server.

The expected answers are the issue's policy, written out here independently of
``schema.policy``:

- anyone: product, productBySku, products, topProducts, productUpdated, registerCustomer;
- a customer for its own id: customer, orderHistory, placeOrder, renameCustomer,
  updateCustomerAddress; for its own orders: order, orderUpdated, cancelOrder, where
  another customer's order answers exactly like a missing one;
- admins: everything.

No, refused or expired token where one is needed: UNAUTHENTICATED; a valid token that is
not allowed: FORBIDDEN. Mutations answer in ``CommandResult.errors`` and write nothing
(checked by the outbox position: the next admin write lands right after the previous
one); queries and subscriptions answer a GraphQL error with ``extensions.code``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from graphql import is_non_null_type
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.auth import mint
from schema.build import build_schema
from tests.e2e.conftest import (
    SECRET,
    Client,
    Server,
    admin_token,
    bearer,
    customer_token,
    environment,
)

OK = "OK"
UNAUTHENTICATED = "UNAUTHENTICATED"
FORBIDDEN = "FORBIDDEN"
HIDDEN = "HIDDEN"  # another customer's order: answered like a missing one

ANONYMOUS = "anonymous"
BAD_TOKEN = "bad token"
EXPIRED_ADMIN = "expired admin token"
EXPIRED_OWNER = "expired owner token"
NO_ROLE = "valid token, no role"
OTHER = "other customer"
OWNER = "owning customer"
ADMIN = "admin"
# Admins last: their allowed commands change what the others were refused.
CALLERS = (ANONYMOUS, BAD_TOKEN, EXPIRED_ADMIN, EXPIRED_OWNER, NO_ROLE, OTHER, OWNER, ADMIN)
NOT_AUTHENTICATED = (ANONYMOUS, BAD_TOKEN, EXPIRED_ADMIN, EXPIRED_OWNER)

PUBLIC = {
    "Query.product", "Query.productBySku", "Query.products", "Query.topProducts",
    "Subscription.productUpdated", "Mutation.registerCustomer",
}  # fmt: skip
OWN_CUSTOMER = {
    "Query.customer", "Query.orderHistory", "Mutation.placeOrder", "Mutation.renameCustomer",
    "Mutation.updateCustomerAddress", "Query.wishlist",
}  # fmt: skip
# The customer alone, for its own id: admins read a wish list but do not change it.
CUSTOMER_ITSELF = {"Mutation.addToWishlist", "Mutation.removeFromWishlist"}
OWN_ORDER = {"Query.order", "Subscription.orderUpdated", "Mutation.cancelOrder"}
ADMIN_ONLY = {
    "Query.shippingQueue", "Query.dashboard", "Query.auditTrail", "Query.projections",
    "Subscription.dashboardUpdated", "Subscription.events", "Mutation.createProduct",
    "Mutation.updateProduct", "Mutation.changeProductPrice", "Mutation.restockProduct",
    "Mutation.discontinueProduct", "Mutation.shipOrder", "Mutation.rebuildProjections",
    "Mutation.resumeProjection",
}  # fmt: skip
# Admin actions write no events (nothing for the matrix's outbox bookkeeping): every
# caller's answer to them is checked in tests/e2e/test_admin.py.
ADMIN_ACTIONS = {"Mutation.rebuildProjections", "Mutation.resumeProjection"}

SERVED = build_schema()._schema
ROOT_TYPES = {"Query": SERVED.query_type, "Mutation": SERVED.mutation_type,
              "Subscription": SERVED.subscription_type}  # fmt: skip


def expected(name: str, caller: str) -> str:
    """The issue's answer for root field ``name`` ("Type.field") and ``caller``."""
    if name in PUBLIC:
        return OK
    if caller in NOT_AUTHENTICATED:
        return UNAUTHENTICATED
    if caller == ADMIN:
        return FORBIDDEN if name in CUSTOMER_ITSELF else OK
    if name in ADMIN_ONLY or caller == NO_ROLE:
        return FORBIDDEN
    if caller == OWNER:
        return OK
    return HIDDEN if name in OWN_ORDER else FORBIDDEN


def expired(subject: str, roles: list[str]) -> str:
    claims = {"sub": subject, "roles": roles, "iat": int(time.time()) - 70,
              "exp": int(time.time()) - 10}  # fmt: skip
    return jwt.encode(claims, SECRET, algorithm="HS256")


@dataclass
class World:
    """What the admin set up: a product, customers A (owner) and B (other), an order each."""

    server: Server = field(repr=False)
    product: str
    sku: str
    marker: str  # restocked by the admin after every refused command: one event each
    owner: str
    other: str
    order: str  # the owner's
    other_order: str
    version: int  # the setup's last outbox position
    tokens: dict[str, str | None] = field(default_factory=dict, repr=False)
    head: int = 0  # the last outbox position the matrix knows of


def setup_world(server: Server) -> World:
    def post(query: str, variables: dict[str, Any]) -> dict[str, Any]:
        response = as_admin.post("/graphql", json={"query": query, "variables": variables})
        assert response.status_code == 200, response.text
        body = response.json()
        assert "errors" not in body, body
        [result] = body["data"].values()
        assert result["success"], result
        return dict(result)

    headers = bearer(admin_token())
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as as_admin:
        sku = f"MUG-{uuid.uuid4().hex[:6]}"
        product = post(CREATE_PRODUCT, {"sku": sku})
        marker = post(CREATE_PRODUCT, {"sku": f"MARK-{uuid.uuid4().hex[:6]}"})
        owner = post(REGISTER, {"email": "ada@example.org"})
        other = post(REGISTER, {"email": "bob@example.org"})
        order = post(PLACE, {"customer": owner["id"], "product": product["id"]})
        other_order = post(PLACE, {"customer": other["id"], "product": product["id"]})
    world = World(
        server=server, product=product["id"], sku=sku, marker=marker["id"], owner=owner["id"],
        other=other["id"], order=order["id"], other_order=other_order["id"],
        version=other_order["version"], head=other_order["version"],
    )  # fmt: skip
    world.tokens = {
        ANONYMOUS: None,
        BAD_TOKEN: "not-a-jwt",
        EXPIRED_ADMIN: expired("admin", ["admin"]),
        EXPIRED_OWNER: expired(world.owner, ["customer"]),
        NO_ROLE: mint(SECRET, "someone", [], 3600),
        OTHER: customer_token(world.other),
        OWNER: customer_token(world.owner),
        ADMIN: admin_token(),
    }
    return world


@pytest.fixture(scope="module")
def world(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One server for the whole matrix (as tests.e2e.conftest's server_env configures it)."""
    directory: Path = tmp_path_factory.mktemp("policy-matrix")
    env = environment(mongo_url, directory)
    server = Server(env, directory / "server.log").start()
    try:
        yield setup_world(server)
    finally:
        server.stop()


@pytest.fixture
async def http(world: World) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=world.server.url, timeout=30) as client:
        yield client


class Cells:
    """Runs every cell, collecting mismatches so one run shows them all."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.checked = 0

    @asynccontextmanager
    async def cell(self, name: str, caller: str) -> AsyncIterator[None]:
        self.checked += 1
        try:
            yield
        except AssertionError as error:
            self.failures.append(f"{name} as {caller} (expected {expected(name, caller)}): {error}")

    def verify(self, count: int) -> None:
        assert not self.failures, f"{len(self.failures)} cells failed:\n" + "\n".join(self.failures)
        assert self.checked == count


def substitute(body: Any, old: str, new: str) -> Any:
    return json.loads(json.dumps(body).replace(old, new))


def no_internal_errors(server: Server) -> None:
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert "unexpected error" not in log, log[-3000:]


# --------------------------------------------------------------------------- setup

CREATE_PRODUCT = """mutation($sku: String!) {
  createProduct(input: {sku: $sku, name: $sku, category: "c", priceCents: 1000,
                        initialStock: 1000}) { success id version } }"""
REGISTER = """mutation($email: String!) {
  registerCustomer(input: {email: $email, name: "Someone",
    address: {line1: "Main St 1", city: "Berlin", postalCode: "10115", country: "DE"}}) {
    success id version } }"""
PLACE = """mutation($customer: ID!, $product: ID!) {
  placeOrder(input: {customerId: $customer, lines: [{productId: $product, quantity: 1}]}) {
    success id version } }"""
RESTOCK_MARKER = """mutation($id: ID!) {
  restockProduct(id: $id, quantity: 1) { success version } }"""

# --------------------------------------------------------------------------- queries

Check = Callable[[Any, World], bool]


@dataclass(frozen=True)
class Operation:
    document: str
    variables: Callable[[World], dict[str, Any]]
    check: Check  # the allowed answer (the field's value) is right


def ids(connection: dict[str, Any]) -> list[str]:
    return [edge["node"]["id"] for edge in connection["edges"]]


READS: dict[str, Operation] = {
    "Query.product": Operation(
        "query($id: ID!, $v: Version) { product(id: $id, minVersion: $v) { id } }",
        lambda w: {"id": w.product, "v": w.version},
        lambda d, w: d == {"id": w.product},
    ),
    "Query.productBySku": Operation(
        "query($sku: String!, $v: Version) { productBySku(sku: $sku, minVersion: $v) { id } }",
        lambda w: {"sku": w.sku, "v": w.version},
        lambda d, w: d == {"id": w.product},
    ),
    "Query.products": Operation(
        "query($v: Version) { products(first: 100, minVersion: $v) { edges { node { id } } } }",
        lambda w: {"v": w.version},
        lambda d, w: w.product in ids(d) and w.marker in ids(d),
    ),
    "Query.topProducts": Operation(
        "query($v: Version) { topProducts(minVersion: $v) { productId unitsSold } }",
        lambda w: {"v": w.version},
        lambda d, w: {"productId": w.product, "unitsSold": 2} in d,
    ),
    "Query.customer": Operation(
        "query($id: ID!, $v: Version) { customer(id: $id, minVersion: $v) { id email } }",
        lambda w: {"id": w.owner, "v": w.version},
        lambda d, w: d == {"id": w.owner, "email": "ada@example.org"},
    ),
    "Query.order": Operation(
        "query($id: ID!, $v: Version) { order(id: $id, minVersion: $v) { id customer { id } } }",
        lambda w: {"id": w.order, "v": w.version},
        lambda d, w: d == {"id": w.order, "customer": {"id": w.owner}},
    ),
    "Query.orderHistory": Operation(
        """query($id: ID!, $v: Version) { orderHistory(customerId: $id, minVersion: $v) {
             edges { node { id } } } }""",
        lambda w: {"id": w.owner, "v": w.version},
        lambda d, w: ids(d) == [w.order],
    ),
    "Query.wishlist": Operation(
        """query($id: ID!, $v: Version) { wishlist(customerId: $id, minVersion: $v) {
             customerId items { productId } } }""",
        lambda w: {"id": w.owner, "v": w.version},
        lambda d, w: d["customerId"] == w.owner,
    ),
    "Query.shippingQueue": Operation(
        "query($v: Version) { shippingQueue(minVersion: $v) { edges { node { id } } } }",
        lambda w: {"v": w.version},
        lambda d, w: {w.order, w.other_order} <= set(ids(d)),
    ),
    "Query.dashboard": Operation(
        "query($v: Version) { dashboard(minVersion: $v) { customerCount orderCount } }",
        lambda w: {"v": w.version},
        lambda d, w: d["customerCount"] >= 2 and d["orderCount"] >= 2,
    ),
    "Query.auditTrail": Operation(
        """query($id: ID!, $v: Version) { auditTrail(aggregateId: $id, minVersion: $v) {
             edges { node { aggregateId type } } } }""",
        lambda w: {"id": w.order, "v": w.version},
        lambda d, w: d["edges"][0]["node"] == {"aggregateId": w.order, "type": "OrderPlaced"},
    ),
    "Query.projections": Operation(
        "{ projections { name headVersion } }",
        lambda w: {},
        lambda d, w: len(d) > 0 and max(p["headVersion"] for p in d) >= w.version,
    ),
}


def refused_read(body: dict[str, Any], name: str, code: str) -> None:
    root, field_name = name.split(".")
    root_type = ROOT_TYPES[root]
    assert root_type is not None
    non_null = is_non_null_type(root_type.fields[field_name].type)
    assert body.get("data") == (None if non_null else {field_name: None}), body
    errors = body.get("errors") or []
    assert [(e.get("path"), e.get("extensions")) for e in errors] == [
        ([field_name], {"code": code})
    ], body
    assert errors[0]["message"], body


async def test_every_query_for_every_caller(world: World, http: httpx.AsyncClient) -> None:
    cells = Cells()
    missing = str(uuid.uuid4())
    for name, operation in READS.items():
        field_name = name.split(".")[1]
        variables = operation.variables(world)
        for caller in CALLERS:
            async with cells.cell(name, caller):
                client = Client(http, world.tokens[caller])
                body = await client.post(operation.document, variables)
                outcome = expected(name, caller)
                if outcome == OK:
                    assert "errors" not in body, body
                    value = body["data"][field_name]
                    assert operation.check(value, world), body
                elif outcome == HIDDEN:
                    # Exactly the answer to an order id that does not exist.
                    assert body == {"data": {field_name: None}}, body
                    assert variables["id"] == world.order
                    absent = await client.post(operation.document, {**variables, "id": missing})
                    assert substitute(body, world.order, missing) == absent, (body, absent)
                else:
                    refused_read(body, name, outcome)
    cells.verify(len(READS) * len(CALLERS))
    no_internal_errors(world.server)


async def test_a_refused_token_still_gets_public_fields_in_the_same_request(
    world: World, http: httpx.AsyncClient
) -> None:
    document = """query($p: ID!, $c: ID!, $v: Version) {
      product(id: $p, minVersion: $v) { id } customer(id: $c, minVersion: $v) { id } }"""
    variables = {"p": world.product, "c": world.owner, "v": world.version}
    for caller in (ANONYMOUS, BAD_TOKEN, EXPIRED_OWNER, OTHER):
        body = await Client(http, world.tokens[caller]).post(document, variables)
        code = FORBIDDEN if caller == OTHER else UNAUTHENTICATED
        assert body["data"] == {"product": {"id": world.product}, "customer": None}, caller
        assert [(e["path"], e["extensions"]) for e in body["errors"]] == [
            (["customer"], {"code": code})
        ], caller
    owner = await Client(http, world.tokens[OWNER]).data(document, variables)
    assert owner == {"product": {"id": world.product}, "customer": {"id": world.owner}}


# --------------------------------------------------------------------------- subscriptions

SUBSCRIPTIONS: dict[str, Operation] = {
    "Subscription.productUpdated": Operation(
        "subscription($id: ID!, $v: Version) { productUpdated(id: $id, minVersion: $v) { id } }",
        lambda w: {"id": w.product, "v": w.version},
        lambda d, w: d == {"id": w.product},
    ),
    "Subscription.orderUpdated": Operation(
        """subscription($id: ID!, $v: Version) {
             orderUpdated(id: $id, minVersion: $v) { id customer { id } } }""",
        lambda w: {"id": w.order, "v": w.version},
        lambda d, w: d == {"id": w.order, "customer": {"id": w.owner}},
    ),
    "Subscription.dashboardUpdated": Operation(
        "subscription($v: Version) { dashboardUpdated(minVersion: $v) { orderCount version } }",
        lambda w: {"v": w.version},
        lambda d, w: d["orderCount"] >= 2 and d["version"] >= w.version,
    ),
    "Subscription.events": Operation(
        "subscription { events(afterVersion: 0) { version aggregateId } }",
        lambda w: {},
        lambda d, w: d == {"version": 1, "aggregateId": w.product},
    ),
}
CLOSED = "closed"


async def _receive(ws: ClientConnection, within: float = 15.0) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), within))
        if message["type"] not in ("ka", "ping", "pong"):
            return message


@asynccontextmanager
async def raw_subscription(
    server: Server, query: str, variables: dict[str, Any], token: str | None
) -> AsyncIterator[Callable[[], Awaitable[dict[str, Any]]]]:
    """Subscribes over graphql-transport-ws; yields a function returning the next message
    as sent, or ``{"type": "closed", "code", "reason"}`` once the server closed the socket
    (before acknowledging the connection too)."""
    async with connect(server.ws_url, subprotocols=["graphql-transport-ws"], open_timeout=10) as ws:  # type: ignore[list-item]

        async def receive() -> dict[str, Any]:
            try:
                return await _receive(ws)
            except ConnectionClosed:
                return {"type": CLOSED, "code": ws.close_code, "reason": ws.close_reason}

        await ws.send(json.dumps({"type": "connection_init", "payload": bearer(token)}))
        acknowledged = await receive()
        if acknowledged["type"] == "connection_ack":
            payload = {"query": query, "variables": variables}
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
            yield receive
        else:
            first = [acknowledged]

            async def closed() -> dict[str, Any]:
                return first.pop() if first else await receive()

            yield closed


async def first_message(
    world: World, operation: Operation, caller: str, **variables: Any
) -> dict[str, Any]:
    token = world.tokens[caller]
    merged = {**operation.variables(world), **variables}
    async with raw_subscription(world.server, operation.document, merged, token) as receive:
        return await receive()


def refused_subscription(message: dict[str, Any], field_name: str, code: str) -> None:
    assert (message["type"], message["id"]) == ("error", "1"), message
    payload = message["payload"]
    assert [(e.get("path"), e.get("extensions")) for e in payload] == [
        ([field_name], {"code": code})
    ], message
    assert payload[0]["message"], message


# Tokens a socket authenticates with on connection_init; the policy wants the fields
# judged like anonymous HTTP requests with them.
SOCKET_CALLERS = tuple(c for c in CALLERS if c not in (BAD_TOKEN, EXPIRED_ADMIN, EXPIRED_OWNER))


async def test_every_subscription_for_every_caller_with_a_valid_or_no_token(world: World) -> None:
    await check_every_subscription(world, first_message)


async def check_every_subscription(
    world: World, first: Callable[..., Awaitable[dict[str, Any]]]
) -> None:
    """Each subscription for each socket caller, its first message taken by ``first``
    (one WebSocket protocol or the other)."""
    cells = Cells()
    missing = str(uuid.uuid4())
    for name, operation in SUBSCRIPTIONS.items():
        field_name = name.split(".")[1]
        for caller in SOCKET_CALLERS:
            async with cells.cell(name, caller):
                message = await first(world, operation, caller)
                outcome = expected(name, caller)
                if outcome == OK:
                    assert (message["type"], message["id"]) == ("next", "1"), message
                    assert "errors" not in message["payload"], message
                    assert operation.check(message["payload"]["data"][field_name], world), message
                elif outcome == HIDDEN:
                    assert message["type"] == "next", message
                    errors = message["payload"]["errors"]
                    assert [e["extensions"] for e in errors] == [{"code": "NOT_FOUND"}], message
                    absent = await first(world, operation, caller, id=missing)
                    assert substitute(message, world.order, missing) == absent, (message, absent)
                else:
                    refused_subscription(message, field_name, outcome)
    cells.verify(len(SUBSCRIPTIONS) * len(SOCKET_CALLERS))
    no_internal_errors(world.server)


async def test_a_bad_or_expired_token_never_reaches_a_protected_subscription(
    world: World,
) -> None:
    """Whatever the socket does with the token, no protected field answers data."""
    for name, operation in SUBSCRIPTIONS.items():
        if name in PUBLIC:
            continue
        for caller in (BAD_TOKEN, EXPIRED_ADMIN, EXPIRED_OWNER):
            message = await first_message(world, operation, caller)
            if message["type"] == CLOSED:
                assert message["code"] == 4403, message
                assert "refused" in message["reason"], message
            else:
                refused_subscription(message, name.split(".")[1], UNAUTHENTICATED)


async def test_a_bad_or_expired_token_closes_the_socket_with_4403(world: World) -> None:
    """The issue's rule for sockets: a bad token is not judged per field (as on HTTP)
    but closes the socket, with the reason, before any operation runs."""
    cells = Cells()
    callers = (BAD_TOKEN, EXPIRED_ADMIN, EXPIRED_OWNER)
    for name, operation in SUBSCRIPTIONS.items():
        for caller in callers:
            async with cells.cell(name, caller):
                message = await first_message(world, operation, caller)
                assert message["type"] == CLOSED, message
                assert message["code"] == 4403, message
                assert "refused" in message["reason"] or "expired" in message["reason"], message
    cells.verify(len(SUBSCRIPTIONS) * len(callers))


async def test_an_order_subscription_ends_when_its_token_expires(world: World) -> None:
    now = int(time.time())
    expires_at = now + 2
    claims = {"sub": world.owner, "roles": ["customer"], "iat": now, "exp": expires_at}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    operation = SUBSCRIPTIONS["Subscription.orderUpdated"]
    variables = operation.variables(world)
    async with raw_subscription(world.server, operation.document, variables, token) as receive:
        first = await receive()
        assert first["type"] == "next", first
        assert operation.check(first["payload"]["data"]["orderUpdated"], world), first
        # Nothing changes the order: the next message is the expiry (within ~2 s).
        ended = await receive()
    assert ended["type"] == "next", ended
    assert [e["extensions"] for e in ended["payload"]["errors"]] == [{"code": UNAUTHENTICATED}]
    assert time.time() >= expires_at


# --------------------------------------------------------------------------- mutations

ADDRESS = '{line1: $line1, city: "Paris", postalCode: "75001", country: "FR"}'
RESULT = "{ success id version aggregateVersion errors { code field message } }"
ORDER_STATUS = "query($id: ID!, $v: Version) { order(id: $id, minVersion: $v) { status } }"


def mutation(signature: str, call: str) -> str:
    return f"mutation({signature}) {{ {call} {RESULT} }}"


@dataclass(frozen=True)
class Command:
    document: str
    # Variables for one call; may write (as the admin) what the call needs, e.g. a fresh
    # order to cancel, and returns the outbox position it wrote up to (or None).
    prepare: Callable[[Client, World], Awaitable[tuple[dict[str, Any], int | None]]]


async def _admin_write(admin: Client, document: str, variables: dict[str, Any]) -> Any:
    [result] = (await admin.data(document, variables)).values()
    assert result["success"], result
    return result


def _fixed(make: Callable[[World], dict[str, Any]]) -> Any:
    async def prepare(admin: Client, world: World) -> tuple[dict[str, Any], int | None]:
        return make(world), None

    return prepare


async def _fresh_order(admin: Client, world: World) -> tuple[dict[str, Any], int | None]:
    placed = await _admin_write(admin, PLACE, {"customer": world.owner, "product": world.product})
    return {"id": placed["id"]}, placed["version"]


async def _fresh_product(admin: Client, world: World) -> tuple[dict[str, Any], int | None]:
    created = await _admin_write(admin, CREATE_PRODUCT, {"sku": f"D-{uuid.uuid4().hex[:8]}"})
    return {"id": created["id"]}, created["version"]


ADD_TO_WISHLIST = mutation(
    "$customer: ID!, $product: ID!", "addToWishlist(customerId: $customer, productId: $product)"
)


async def _fresh_wish(admin: Client, world: World) -> tuple[dict[str, Any], int | None]:
    """A new product: the owner adding it writes an event (adding it again would not)."""
    variables, version = await _fresh_product(admin, world)
    return {"customer": world.owner, "product": variables["id"]}, version


async def _wished(admin: Client, world: World) -> tuple[dict[str, Any], int | None]:
    """A new product on the owner's wish list (added by the owner: admins may not)."""
    variables, _ = await _fresh_wish(admin, world)
    added = await _admin_write(admin.as_(world.tokens[OWNER]), ADD_TO_WISHLIST, variables)
    return variables, added["version"]


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


COMMANDS: dict[str, Command] = {
    "Mutation.createProduct": Command(
        mutation("$sku: String!", 'createProduct(input: {sku: $sku, name: "New", '
                 'category: "c", priceCents: 100})'),
        _fixed(lambda w: {"sku": _unique("NEW-")}),
    ),
    "Mutation.updateProduct": Command(
        mutation("$id: ID!", 'updateProduct(id: $id, input: {name: "Renamed"})'),
        _fixed(lambda w: {"id": w.product}),
    ),
    "Mutation.changeProductPrice": Command(
        mutation("$id: ID!", "changeProductPrice(id: $id, priceCents: 1234)"),
        _fixed(lambda w: {"id": w.product}),
    ),
    "Mutation.restockProduct": Command(
        mutation("$id: ID!", "restockProduct(id: $id, quantity: 5)"),
        _fixed(lambda w: {"id": w.product}),
    ),
    "Mutation.discontinueProduct": Command(
        mutation("$id: ID!", "discontinueProduct(id: $id)"), _fresh_product
    ),
    "Mutation.shipOrder": Command(
        mutation("$id: ID!", 'shipOrder(id: $id, trackingNumber: "T-1")'), _fresh_order
    ),
    "Mutation.registerCustomer": Command(
        mutation("$email: String!, $line1: String!",
                 f'registerCustomer(input: {{email: $email, name: "New", address: {ADDRESS}}})'),
        _fixed(lambda w: {"email": _unique("") + "@example.org", "line1": "Elm St"}),
    ),
    # New values each time: renaming to the current name (or moving to the current
    # address) writes nothing.
    "Mutation.renameCustomer": Command(
        mutation("$id: ID!, $name: String!", "renameCustomer(id: $id, name: $name)"),
        _fixed(lambda w: {"id": w.owner, "name": _unique("Ada ")}),
    ),
    "Mutation.updateCustomerAddress": Command(
        mutation("$id: ID!, $line1: String!",
                 f"updateCustomerAddress(id: $id, address: {ADDRESS})"),
        _fixed(lambda w: {"id": w.owner, "line1": _unique("Elm St ")}),
    ),
    "Mutation.placeOrder": Command(
        mutation("$customer: ID!, $product: ID!", "placeOrder(input: {customerId: $customer, "
                 "lines: [{productId: $product, quantity: 1}]})"),
        _fixed(lambda w: {"customer": w.owner, "product": w.product}),
    ),
    "Mutation.cancelOrder": Command(
        mutation("$id: ID!", 'cancelOrder(id: $id, reason: "changed my mind")'), _fresh_order
    ),
    "Mutation.addToWishlist": Command(ADD_TO_WISHLIST, _fresh_wish),
    "Mutation.removeFromWishlist": Command(
        mutation("$customer: ID!, $product: ID!",
                 "removeFromWishlist(customerId: $customer, productId: $product)"),
        _wished,
    ),
}  # fmt: skip


async def nothing_written_since(admin: Client, world: World) -> None:
    """The next admin write lands right after the last known position: nobody wrote."""
    marker = await _admin_write(admin, RESTOCK_MARKER, {"id": world.marker})
    before, world.head = world.head, marker["version"]
    assert marker["version"] == before + 1, (
        f"the outbox moved from {before} to {marker['version'] - 1} without an admin write"
    )


async def test_every_mutation_for_every_caller(world: World, http: httpx.AsyncClient) -> None:
    cells = Cells()
    admin = Client(http, world.tokens[ADMIN])
    missing = str(uuid.uuid4())
    world.head = (await _admin_write(admin, RESTOCK_MARKER, {"id": world.marker}))["version"]
    for name, command in COMMANDS.items():
        field_name = name.split(".")[1]
        for caller in CALLERS:
            async with cells.cell(name, caller):
                variables, wrote = await command.prepare(admin, world)
                world.head = wrote or world.head
                client = Client(http, world.tokens[caller])
                result = (await client.data(command.document, variables))[field_name]
                outcome = expected(name, caller)
                if outcome == OK:
                    before, world.head = world.head, max(world.head, result["version"] or 0)
                    assert (result["success"], result["errors"]) == (True, []), result
                    assert result["version"] > before, (result, before)
                    continue
                if outcome == HIDDEN:
                    # Exactly the answer to an order id that does not exist.
                    assert [(e["code"], e["field"]) for e in result["errors"]] == [
                        ("NOT_FOUND", "id")
                    ], result
                    absent = await client.data(command.document, {**variables, "id": missing})
                    assert substitute(result, variables["id"], missing) == absent[field_name], (
                        result, absent
                    )  # fmt: skip
                    await nothing_written_since(admin, world)
                    order = await admin.data(ORDER_STATUS, {"id": variables["id"], "v": world.head})
                    assert order == {"order": {"status": "PLACED"}}, order
                    continue
                assert result["success"] is False, result
                assert [(e["code"], e["field"]) for e in result["errors"]] == [(outcome, None)], (
                    result
                )
                assert result["errors"][0]["message"], result
                assert (result["id"], result["version"], result["aggregateVersion"]) == (
                    None, None, None
                ), result  # fmt: skip
                await nothing_written_since(admin, world)
    cells.verify(len(COMMANDS) * len(CALLERS))
    no_internal_errors(world.server)


def test_the_matrix_covers_every_root_field_of_the_served_schema() -> None:
    served = {f"{root}.{name}" for root, t in ROOT_TYPES.items() if t for name in t.fields}
    covered = set(READS) | set(SUBSCRIPTIONS) | set(COMMANDS) | ADMIN_ACTIONS
    assert covered == served, (sorted(served - covered), sorted(covered - served))
    groups = (PUBLIC, OWN_CUSTOMER, CUSTOMER_ITSELF, OWN_ORDER, ADMIN_ONLY)
    assert served == set().union(*groups)
    assert sum(len(group) for group in groups) == len(served)
