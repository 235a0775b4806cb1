"""Bearer tokens: HS256 with a secret, RS256 and ES256 through a JWKS served over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

import app.auth
from app.auth import (
    JWKS_LIFETIME,
    JWKS_MIN_REFRESH,
    SECRET_FILE,
    JwtAuthenticator,
    load_or_create_secret,
    mint,
)
from app.ferretdb import free_port
from domain.identity import ADMIN_ROLE, ANONYMOUS, CUSTOMER_ROLE, NO_ORDERS, Principal

ROOT = Path(__file__).resolve().parents[2]
SECRET = "unit-test-secret-0123456789abcdef"
OTHER_SECRET = "another-secret-0123456789abcdef!"


def claims(**overrides: Any) -> dict[str, Any]:
    """A good token's claims (expiring in an hour); ``None`` drops a claim."""
    now = int(time.time())
    base: dict[str, Any] = {"sub": "c-1", "roles": [CUSTOMER_ROLE], "iat": now, "exp": now + 3600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs256(secret: str = SECRET, **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), secret, algorithm="HS256")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(
    header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    """A JWT built by hand, for tokens PyJWT refuses to produce."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


async def check(authenticator: JwtAuthenticator, token: str) -> Principal:
    return await authenticator.principal(f"Bearer {token}")


def assert_refused(principal: Principal, *why: str) -> None:
    assert principal.refused is not None, principal
    assert not principal.valid()
    assert principal.subject is None
    assert principal.roles == frozenset()
    assert not principal.is_admin
    assert principal.customer_id is None
    assert principal.why_not_valid() == principal.refused
    for part in why:
        assert part in principal.refused, principal.refused


# HS256 -------------------------------------------------------------------------------------


async def test_a_good_hs256_token_names_its_subject_roles_and_expiry() -> None:
    auth = JwtAuthenticator(secret=SECRET)
    exp = int(time.time()) + 600
    principal = await check(auth, hs256(sub="c-42", roles=[CUSTOMER_ROLE], exp=exp))
    assert principal == Principal(subject="c-42", roles=frozenset({CUSTOMER_ROLE}), expires_at=exp)
    assert principal.valid()
    assert principal.customer_id == "c-42"
    assert not principal.is_admin
    admin = await check(auth, hs256(sub="root", roles=[ADMIN_ROLE]))
    assert (admin.subject, admin.roles, admin.is_admin, admin.customer_id) == (
        "root", frozenset({ADMIN_ROLE}), True, None
    )  # fmt: skip


async def test_the_bearer_scheme_is_case_insensitive_and_mint_makes_good_tokens() -> None:
    auth = JwtAuthenticator(secret=SECRET, issuer="https://shop", audience="shop-api")
    token = mint(SECRET, "c-7", [CUSTOMER_ROLE], 60, issuer="https://shop", audience="shop-api")
    principal = await auth.principal(f"  bearer   {token}  ")
    assert (principal.subject, principal.roles) == ("c-7", frozenset({CUSTOMER_ROLE}))
    assert principal.expires_at is not None
    assert 55 <= principal.expires_at - time.time() <= 61
    assert await auth.principal(None) is ANONYMOUS
    assert await auth.principal("   ") is ANONYMOUS


async def test_unknown_roles_are_dropped_and_a_string_of_roles_is_split() -> None:
    auth = JwtAuthenticator(secret=SECRET)
    mixed = await check(auth, hs256(roles=[ADMIN_ROLE, "superuser", 3, None, "Customer"]))
    assert mixed.roles == frozenset({ADMIN_ROLE})
    spaced = await check(auth, hs256(roles="admin customer root"))
    assert spaced.roles == frozenset({ADMIN_ROLE, CUSTOMER_ROLE})
    for nothing in (None, {"admin": True}, 7):
        principal = await check(auth, hs256(roles=nothing))
        assert principal.valid()
        assert principal.roles == frozenset()
        assert not principal.is_admin
        assert principal.customer_id is None


async def test_a_nested_roles_claim_is_read_through_its_dotted_path() -> None:
    auth = JwtAuthenticator(secret=SECRET, roles_claim="realm_access.roles")
    token = hs256(roles=None, realm_access={"roles": ["offline_access", ADMIN_ROLE]})
    assert (await check(auth, token)).roles == frozenset({ADMIN_ROLE})
    # The top-level claim is not read when the path is nested.
    assert (await check(auth, hs256(roles=[ADMIN_ROLE]))).roles == frozenset()
    assert (await check(auth, hs256(roles=None, realm_access="admin"))).roles == frozenset()


async def test_leeway_accepts_a_just_expired_token_and_extends_its_expiry() -> None:
    exp = int(time.time()) - 5
    lenient = await check(JwtAuthenticator(secret=SECRET, leeway=60), hs256(exp=exp))
    assert lenient.valid()
    assert lenient.expires_at == exp + 60
    assert_refused(await check(JwtAuthenticator(secret=SECRET), hs256(exp=exp)), "expired")


# Refusals ---------------------------------------------------------------------------------


def none_token() -> str:
    return handmade({"alg": "none", "typ": "JWT"}, claims(roles=[ADMIN_ROLE]), lambda _: b"")


GOOD = {"iss": "https://shop", "aud": "shop-api"}


def flawed(secret: str = SECRET, **overrides: Any) -> Callable[[], str]:
    """A token good for the strict authenticator below but for ``overrides``."""
    return lambda: hs256(secret, **{**GOOD, **overrides})


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (flawed(exp=int(time.time()) - 10), "it has expired"),
        (flawed(iss="https://evil"), "Invalid issuer"),
        (flawed(iss=None), "iss"),
        (flawed(aud="another-api"), "Audience doesn't match"),
        (flawed(aud=None), "aud"),
        (flawed(sub=None), "sub"),
        (flawed(sub=""), "sub"),
        (flawed(sub=42), "Subject must be a string"),
        (flawed(exp=None), "exp"),
        (flawed(exp="tomorrow"), "exp"),
        (flawed(OTHER_SECRET), "Signature verification failed"),
        (lambda: "garbage", "it is not a JWT"),
        (lambda: "a.b.c", "it is not a JWT"),
        (none_token, "'none'"),
        (
            lambda: jwt.encode(claims(**GOOD), SECRET * 2, algorithm="HS512"),
            "tokens signed with 'HS512' are not accepted",
        ),
    ],
    ids=[
        "expired", "wrong-issuer", "no-issuer", "wrong-audience", "no-audience", "no-sub",
        "empty-sub", "numeric-sub", "no-exp", "bad-exp", "wrong-key", "garbage",
        "three-parts", "alg-none", "hs512",
    ],
)  # fmt: skip
async def test_bad_tokens_are_refused_with_a_reason(make: Callable[[], str], why: str) -> None:
    auth = JwtAuthenticator(secret=SECRET, issuer=GOOD["iss"], audience=GOOD["aud"])
    assert (await check(auth, flawed()())).valid()  # the control: only the flaw refuses
    principal = await check(auth, make())
    assert_refused(principal, "the bearer token was refused", why)


async def test_audience_and_issuer_are_only_checked_when_configured() -> None:
    plain = JwtAuthenticator(secret=SECRET)
    principal = await check(plain, hs256(aud="anything", iss="anyone"))
    assert principal.valid()
    assert principal.subject == "c-1"


async def test_a_basic_authorization_is_refused() -> None:
    principal = await JwtAuthenticator(secret=SECRET).principal("Basic xyz")
    assert_refused(principal, "must be 'Bearer <token>'")
    principal = await JwtAuthenticator(secret=SECRET).principal(hs256())  # no scheme at all
    assert_refused(principal, "must be 'Bearer <token>'")


async def test_an_rs256_token_is_refused_without_a_jwks(rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "r1"})
    assert_refused(
        await check(JwtAuthenticator(secret=SECRET), token), "tokens signed with 'RS256' are not"
    )


def test_an_authenticator_needs_a_key() -> None:
    with pytest.raises(ValueError, match="secret or a JWKS URL"):
        JwtAuthenticator()


# JWKS: a real HTTP server on loopback -------------------------------------------------------


@dataclass
class JwksServer:
    """Serves ``document`` (or ``status`` with a body) and counts the requests."""

    document: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    status: int = 200
    body: bytes | None = None
    requests: int = 0
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/jwks.json"

    def publish(self, *keys: dict[str, Any]) -> None:
        with self.lock:
            self.document = {"keys": list(keys)}

    def answer(self) -> tuple[int, bytes]:
        with self.lock:
            self.requests += 1
            body = self.body if self.body is not None else json.dumps(self.document).encode()
            return self.status, body


@contextmanager
def serve_jwks() -> Iterator[JwksServer]:
    """A JWKS endpoint on 127.0.0.1, in a thread (the e2e tests use it too)."""
    state = JwksServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = state.answer()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    with serve_jwks() as state:
        yield state


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key_2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": "ES256", "use": "sig"}


def signed(key: Any, algorithm: str, kid: str | None, **overrides: Any) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(**overrides), key, algorithm=algorithm, headers=headers)


class Clock:
    """``app.auth``'s monotonic clock, moved by hand: the refresh windows without waiting."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1_000_000.0
        fake = types.SimpleNamespace(time=time.time, monotonic=lambda: self.now)
        monkeypatch.setattr(app.auth, "time", fake)

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


async def test_rs256_and_es256_tokens_from_the_providers_keys_are_accepted(
    jwks: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
    rsa_key_2: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    jwks.publish(rsa_jwk(rsa_key, "rsa-1"), ec_jwk(ec_key, "ec-1"))
    auth = JwtAuthenticator(jwks_url=jwks.url, issuer="https://idp", audience="shop")
    good = {"iss": "https://idp", "aud": "shop"}
    by_rsa = await check(auth, signed(rsa_key, "RS256", "rsa-1", sub="c-rsa", **good))
    assert (by_rsa.subject, by_rsa.roles, by_rsa.valid()) == (
        "c-rsa",
        frozenset({CUSTOMER_ROLE}),
        True,
    )
    by_ec = await check(
        auth, signed(ec_key, "ES256", "ec-1", sub="ops", roles=[ADMIN_ROLE], **good)
    )
    assert (by_ec.subject, by_ec.is_admin) == ("ops", True)
    assert jwks.requests == 1  # the keys are cached

    # Signed by a key the provider does not hold, under a key id it does.
    forged = await check(auth, signed(rsa_key_2, "RS256", "rsa-1", **good))
    assert_refused(forged, "Signature verification failed")
    # A key id naming the EC key, but an RSA signature: the key's type decides.
    assert_refused(await check(auth, signed(rsa_key, "RS256", "ec-1", **good)))
    no_aud = signed(rsa_key, "RS256", "rsa-1", iss="https://idp")
    assert_refused(await check(auth, no_aud), 'missing the "aud" claim')
    # No kid: ambiguous between two keys.
    assert_refused(await check(auth, signed(rsa_key, "RS256", None, **good)), "key id None")


async def test_a_token_without_a_kid_uses_the_providers_only_key(
    jwks: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks.publish(ec_jwk(ec_key, "only"))
    auth = JwtAuthenticator(jwks_url=jwks.url)
    assert (await check(auth, signed(ec_key, "ES256", None, sub="c-9"))).subject == "c-9"


async def test_hs256_signed_with_the_public_key_is_refused(
    jwks: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    """Algorithm confusion: the RSA public key (PEM) used as an HMAC secret."""
    jwks.publish(rsa_jwk(rsa_key, "rsa-1"))
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}
    confused = handmade(
        header, claims(roles=[ADMIN_ROLE]), lambda m: hmac.digest(pem, m, hashlib.sha256)
    )
    for algorithms in (("RS256", "ES256"), ("RS256", "HS256")):
        auth = JwtAuthenticator(jwks_url=jwks.url, algorithms=algorithms)
        assert (await check(auth, signed(rsa_key, "RS256", "rsa-1"))).valid()  # the control
        assert_refused(await check(auth, confused), "tokens signed with 'HS256' are not accepted")
        assert_refused(await check(auth, none_token()), "'none'")
    # With a secret as well, HS256 is checked against the secret, never the public key.
    both = JwtAuthenticator(secret=SECRET, jwks_url=jwks.url)
    assert (await check(both, hs256())).valid()
    assert (await check(both, signed(rsa_key, "RS256", "rsa-1"))).valid()
    assert_refused(await check(both, confused), "Signature verification failed")


async def test_a_new_key_id_is_fetched_once_the_refresh_window_allows(
    jwks: JwksServer,
    clock: Clock,
    rsa_key: rsa.RSAPrivateKey,
    rsa_key_2: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    jwks.publish(rsa_jwk(rsa_key, "2024"))
    auth = JwtAuthenticator(jwks_url=jwks.url)
    assert (await check(auth, signed(rsa_key, "RS256", "2024"))).valid()
    assert jwks.requests == 1

    # The provider rotates: a new key beside the old one.
    jwks.publish(rsa_jwk(rsa_key, "2024"), rsa_jwk(rsa_key_2, "2025"), ec_jwk(ec_key, "ec-2025"))
    clock.advance(JWKS_MIN_REFRESH + 1)
    rotated = await check(auth, signed(rsa_key_2, "RS256", "2025", sub="c-new"))
    assert (rotated.subject, rotated.valid()) == ("c-new", True)
    assert jwks.requests == 2
    # Every key of the refreshed document is there now, the old one too.
    assert (await check(auth, signed(ec_key, "ES256", "ec-2025"))).valid()
    assert (await check(auth, signed(rsa_key, "RS256", "2024"))).valid()
    assert jwks.requests == 2

    # The old key is retired: the cache keeps it until the keys' lifetime is over.
    jwks.publish(rsa_jwk(rsa_key_2, "2025"))
    clock.advance(JWKS_MIN_REFRESH + 1)
    assert (await check(auth, signed(rsa_key, "RS256", "2024"))).valid()
    assert jwks.requests == 2
    clock.advance(JWKS_LIFETIME)
    assert_refused(await check(auth, signed(rsa_key, "RS256", "2024")), "key id '2024'")
    assert (await check(auth, signed(rsa_key_2, "RS256", "2025"))).valid()
    assert jwks.requests == 3


async def test_a_new_key_id_inside_the_refresh_window_is_refused_without_a_fetch(
    jwks: JwksServer, clock: Clock, rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    jwks.publish(rsa_jwk(rsa_key, "old"))
    auth = JwtAuthenticator(jwks_url=jwks.url)
    assert (await check(auth, signed(rsa_key, "RS256", "old"))).valid()
    jwks.publish(rsa_jwk(rsa_key, "old"), rsa_jwk(rsa_key_2, "new"))
    clock.advance(JWKS_MIN_REFRESH / 2)
    assert_refused(await check(auth, signed(rsa_key_2, "RS256", "new")), "key id 'new'")
    assert jwks.requests == 1
    clock.advance(JWKS_MIN_REFRESH / 2 + 0.001)
    assert (await check(auth, signed(rsa_key_2, "RS256", "new"))).valid()
    assert jwks.requests == 2


async def test_made_up_key_ids_fetch_at_most_once_per_refresh_window(
    jwks: JwksServer, clock: Clock, rsa_key: rsa.RSAPrivateKey
) -> None:
    jwks.publish(rsa_jwk(rsa_key, "real"))
    auth = JwtAuthenticator(jwks_url=jwks.url)
    assert (await check(auth, signed(rsa_key, "RS256", "real"))).valid()
    assert jwks.requests == 1

    async def flood(count: int, concurrently: bool) -> None:
        tokens = [signed(rsa_key, "RS256", f"made-up-{i}") for i in range(count)]
        if concurrently:
            principals = await asyncio.gather(*(check(auth, t) for t in tokens))
        else:
            principals = [await check(auth, t) for t in tokens]
        for principal in principals:
            assert_refused(principal, "is not among the issuer's keys")

    await flood(50, concurrently=False)
    assert jwks.requests == 1  # inside the first window: no fetch at all
    for window in range(2, 5):
        clock.advance(JWKS_MIN_REFRESH + 0.5)
        await flood(50, concurrently=window % 2 == 0)
        await flood(50, concurrently=window % 2 == 1)
        assert jwks.requests == window  # one fetch for the whole window
        clock.advance(JWKS_MIN_REFRESH / 2)
        await flood(20, concurrently=False)
        assert jwks.requests == window
    # The real key still works throughout, without a fetch.
    assert (await check(auth, signed(rsa_key, "RS256", "real"))).valid()
    assert jwks.requests == 4


async def test_the_providers_keys_unavailable_refuse_with_a_reason(
    clock: Clock, rsa_key: rsa.RSAPrivateKey
) -> None:
    down = JwtAuthenticator(jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json")
    principal = await check(down, signed(rsa_key, "RS256", "k"))
    assert_refused(principal, "the bearer token was refused", "signing keys are unavailable")


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (503, b'{"error": "maintenance"}'),
        (200, b"<html>not json</html>"),
        (200, b'{"keys": []}'),
        (200, b'{"keys": "nope"}'),
        (200, b'{"keys": [{"kty": "RSA", "kid": "k"}]}'),
        (200, b"[1, 2]"),
    ],
    ids=["503", "not-json", "no-keys", "keys-not-a-list", "no-usable-key", "a-list"],
)
async def test_a_broken_jwks_answer_refuses_without_raising(
    jwks: JwksServer, clock: Clock, rsa_key: rsa.RSAPrivateKey, status: int, body: bytes
) -> None:
    jwks.status, jwks.body = status, body
    auth = JwtAuthenticator(jwks_url=jwks.url)
    principal = await check(auth, signed(rsa_key, "RS256", "k"))
    assert_refused(principal, "the bearer token was refused")
    assert jwks.requests == 1


async def test_keys_already_fetched_survive_the_provider_going_down(
    jwks: JwksServer, clock: Clock, rsa_key: rsa.RSAPrivateKey
) -> None:
    jwks.publish(rsa_jwk(rsa_key, "k"))
    auth = JwtAuthenticator(jwks_url=jwks.url)
    assert (await check(auth, signed(rsa_key, "RS256", "k"))).valid()
    jwks.status, jwks.body = 503, b"{}"
    clock.advance(JWKS_LIFETIME + 1)  # stale: fetched again, which fails
    assert (await check(auth, signed(rsa_key, "RS256", "k"))).valid()
    assert jwks.requests == 2


async def test_while_the_provider_is_down_made_up_key_ids_do_not_hammer_it(
    jwks: JwksServer, clock: Clock, rsa_key: rsa.RSAPrivateKey
) -> None:
    jwks.publish(rsa_jwk(rsa_key, "k"))
    auth = JwtAuthenticator(jwks_url=jwks.url)
    assert (await check(auth, signed(rsa_key, "RS256", "k"))).valid()
    jwks.status, jwks.body = 503, b"{}"
    clock.advance(JWKS_MIN_REFRESH + 1)
    for i in range(20):
        assert_refused(await check(auth, signed(rsa_key, "RS256", f"made-up-{i}")), "key id")
    assert jwks.requests == 2  # one failed fetch in this window, not one per token


async def test_while_the_provider_is_down_from_the_start_tokens_do_not_hammer_it(
    jwks: JwksServer, clock: Clock, rsa_key: rsa.RSAPrivateKey
) -> None:
    jwks.status, jwks.body = 503, b"{}"
    auth = JwtAuthenticator(jwks_url=jwks.url)
    for _ in range(20):
        assert_refused(await check(auth, signed(rsa_key, "RS256", "k")), "unavailable")
    assert jwks.requests == 1


# The development secret ---------------------------------------------------------------------


def test_the_secret_is_created_private_once_and_then_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "var" / "nested"
    secret = load_or_create_secret(data_dir)
    path = data_dir / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(secret) >= 32
    assert path.read_text().strip() == secret
    assert load_or_create_secret(data_dir) == secret
    assert sorted(p.name for p in data_dir.iterdir()) == [SECRET_FILE]  # no temporaries left
    assert load_or_create_secret(tmp_path / "elsewhere") != secret


def test_an_empty_secret_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / SECRET_FILE).write_text("\n")
    with pytest.raises(RuntimeError, match="is empty"):
        load_or_create_secret(tmp_path)


def test_concurrent_creators_in_threads_all_read_the_same_secret(tmp_path: Path) -> None:
    count = 32
    barrier = threading.Barrier(count)
    results: list[str] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(load_or_create_secret(tmp_path))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=create) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert errors == []
    assert len(results) == count
    assert set(results) == {(tmp_path / SECRET_FILE).read_text().strip()}
    assert sorted(p.name for p in tmp_path.iterdir()) == [SECRET_FILE]


CREATOR = """
import sys
from pathlib import Path
from app.auth import load_or_create_secret
print("ready", flush=True)
sys.stdin.readline()
print(load_or_create_secret(Path(sys.argv[1])), flush=True)
"""


def test_concurrent_creators_in_processes_all_read_the_same_secret(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    pipe = subprocess.PIPE
    command = [sys.executable, "-c", CREATOR, str(tmp_path)]
    processes = [
        subprocess.Popen(command, stdin=pipe, stdout=pipe, stderr=pipe, text=True, env=env)
        for _ in range(6)
    ]
    try:
        for process in processes:  # every one imported and waiting at the gate
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        secrets = set()
        for process in processes:
            out, err = process.communicate(timeout=30)
            assert process.returncode == 0, err
            secrets.add(out.strip())
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert secrets == {(tmp_path / SECRET_FILE).read_text().strip()}
    assert stat.S_IMODE((tmp_path / SECRET_FILE).stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [SECRET_FILE]


# What a principal may see and repeat --------------------------------------------------------


def test_order_and_idempotency_scopes() -> None:
    later = time.time() + 600
    admin = Principal("ops", frozenset({ADMIN_ROLE}), later)
    customer = Principal("c-1", frozenset({CUSTOMER_ROLE}), later)
    both = Principal("c-2", frozenset({ADMIN_ROLE, CUSTOMER_ROLE}), later)
    roleless = Principal("someone", frozenset(), later)
    expired = Principal("c-1", frozenset({CUSTOMER_ROLE}), time.time() - 1)
    expired_admin = Principal("ops", frozenset({ADMIN_ROLE}), time.time() - 1)
    refused = Principal(refused="the bearer token was refused: it has expired")
    forever = Principal("c-3", frozenset({CUSTOMER_ROLE}))

    assert admin.order_scope is None  # every order
    assert customer.order_scope == "c-1"
    assert both.order_scope is None
    assert forever.order_scope == "c-3"
    # Callers without a valid customer role get no customer's orders.
    for nobody in (roleless, expired, expired_admin, refused, ANONYMOUS):
        assert nobody.customer_id is None
        assert not nobody.is_admin
    assert not expired.valid()
    # The order scope never widens at expiry: a customer whose token expires while its
    # request waits for a minVersion still sees its own orders only (an admin all).
    assert expired.order_scope == "c-1"
    assert expired_admin.order_scope is None
    for nobody in (roleless, refused, ANONYMOUS):
        assert nobody.order_scope == NO_ORDERS

    assert admin.idempotency_scope == "sub:ops"
    assert customer.idempotency_scope == "sub:c-1"
    assert roleless.idempotency_scope == "sub:someone"
    assert (
        customer.idempotency_scope != Principal("c-9", frozenset({CUSTOMER_ROLE})).idempotency_scope
    )
    # Anonymous callers share a scope, but never the raw key space of internal callers.
    for anonymous in (expired, refused, ANONYMOUS):
        assert anonymous.idempotency_scope == "anonymous"

    assert expired.why_not_valid() == "the bearer token has expired"
    assert "Authorization: Bearer" in ANONYMOUS.why_not_valid()
    assert refused.why_not_valid() == refused.refused
    assert customer.valid(now=later - 1)
    assert not customer.valid(now=later)


def test_no_caller_can_name_a_stored_key_of_another_scope() -> None:
    """An anonymous caller's key is scoped too: sending the stored form of a customer's
    key (``scoped:<hash>``) names another key, not the customer's."""
    from domain.idempotency import scoped

    stored = scoped("k1", Principal("alice", frozenset({CUSTOMER_ROLE})).idempotency_scope)
    assert scoped(stored, ANONYMOUS.idempotency_scope) != stored
    assert scoped("k1", ANONYMOUS.idempotency_scope) != scoped("k1", None)
