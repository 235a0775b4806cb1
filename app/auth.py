"""Who is asking: bearer tokens (JWT) issued elsewhere, verified here.

The server never stores passwords or issues identities in production. It verifies
a token's signature, expiry and (when configured) issuer and audience, and reads
two claims: ``sub`` (for a customer, its customer id) and the roles (``admin``,
``customer``). What each role may do is ``schema.policy``'s business.

Keys, in order of precedence:

- ``SHOP_AUTH_JWKS_URL``: the public keys of an OIDC provider (RS256, ES256),
  fetched over HTTP(S), cached, and fetched again when a token names a key id the
  cache does not hold (at most once per ``JWKS_MIN_REFRESH`` seconds, so tokens with
  made-up key ids cannot make the server hammer the provider).
- ``SHOP_AUTH_SECRET``: a shared secret (HS256), for development, tests and scripts.
- neither: a random secret created once in ``SHOP_DATA_DIR`` (file mode 0600), so
  ``make run`` needs no set-up; ``cqrs-shop token`` signs with the same secret.

Both of the first two may be set: HS256 tokens are then checked with the secret
and the others with the provider's keys. A token's ``alg`` header only chooses
between keys the server already trusts; ``none`` and HS256 against a public key
are refused.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt

from app.settings import Settings
from domain.identity import ANONYMOUS, ROLES, Principal

log = logging.getLogger(__name__)

SECRET_FILE = "auth-secret"
HS256 = "HS256"
# A provider's keys are kept this long, and fetched at most this often for an unknown key id.
JWKS_LIFETIME = 3600.0
JWKS_MIN_REFRESH = 30.0
JWKS_TIMEOUT = 5.0
BEARER = "bearer "
# Verified tokens are remembered (a signature check costs ~50 µs, a request ~1 ms), by
# their exact bytes, for at most this long, so a key the provider withdraws stops
# working within it; refusals are never remembered.
VERIFIED_CACHE_SIZE = 4096
VERIFIED_CACHE_SECONDS = 300.0


class TokenRefused(Exception):
    """The token is malformed, badly signed, expired, or for another issuer or audience."""


@dataclass
class _KeySet:
    """A JWKS document's keys by id, fetched lazily and refreshed on an unknown id.

    Fetches, successful or not, are at least ``JWKS_MIN_REFRESH`` apart: neither tokens
    with made-up key ids nor a provider's outage make every request fetch again.
    Keys are kept for ``JWKS_LIFETIME``, and longer while the provider is unreachable.
    """

    url: str
    algorithms: tuple[str, ...]
    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    fetched_at: float = float("-inf")  # the last successful fetch
    attempted_at: float = float("-inf")  # the last fetch, successful or not
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def key(self, kid: str | None) -> jwt.PyJWK:
        now = time.monotonic()
        known = kid in self.keys or (kid is None and len(self.keys) == 1)
        stale = now - self.fetched_at > JWKS_LIFETIME
        if (stale or not known) and now - self.attempted_at > JWKS_MIN_REFRESH:
            await self._refresh()
        if not self.keys:
            raise TokenRefused("the issuer's signing keys are unavailable")
        if kid is None and len(self.keys) == 1:
            return next(iter(self.keys.values()))
        try:
            return self.keys[kid or ""]
        except KeyError:
            raise TokenRefused(
                f"the token's key id {kid!r} is not among the issuer's keys"
            ) from None

    async def _refresh(self) -> None:
        attempted_before = self.attempted_at
        async with self.lock:
            if self.attempted_at != attempted_before:  # another request fetched meanwhile
                return
            self.attempted_at = time.monotonic()
            try:
                async with httpx.AsyncClient(timeout=JWKS_TIMEOUT) as client:
                    response = await client.get(self.url)
                    response.raise_for_status()
                    document = response.json()
                if not isinstance(document, dict):
                    raise ValueError("the JWKS document is not a JSON object")
                keys = jwt.PyJWKSet.from_dict(document).keys
            except Exception as error:  # any answer but a key set: keep the keys we have
                log.warning("could not fetch the signing keys from %s: %s", self.url, error)
                return
            usable = {k.key_id or "": k for k in keys if k.algorithm_name in self.algorithms}
            if not usable:
                log.warning("the JWKS document at %s has no %s keys", self.url, self.algorithms)
                return
            self.keys = usable
            self.fetched_at = time.monotonic()


class JwtAuthenticator:
    """Turns an ``Authorization`` value into a :class:`Principal` by verifying its bearer
    token (the :class:`~domain.identity.Authenticator` of this server)."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        jwks_url: str | None = None,
        algorithms: Iterable[str] = ("RS256", "ES256"),
        issuer: str | None = None,
        audience: str | None = None,
        roles_claim: str = "roles",
        leeway: float = 0.0,
    ) -> None:
        if secret is None and jwks_url is None:
            raise ValueError("a JwtAuthenticator needs a secret or a JWKS URL")
        self.secret = secret
        self.keys = (
            _KeySet(jwks_url, tuple(a for a in algorithms if a != HS256)) if jwks_url else None
        )
        self.issuer = issuer
        self.audience = audience
        self.roles_claim = roles_claim.split(".")
        self.leeway = leeway
        self._verified: OrderedDict[str, tuple[float, Principal]] = OrderedDict()

    async def principal(self, authorization: str | None) -> Principal:
        """The caller an ``Authorization`` header (or connection parameter) names."""
        if authorization is None or not authorization.strip():
            return ANONYMOUS
        value = authorization.strip()
        if value[: len(BEARER)].lower() != BEARER:
            return Principal(refused="the Authorization value must be 'Bearer <token>'")
        token = value[len(BEARER) :].strip()
        now = time.monotonic()
        if (cached := self._verified.get(token)) is not None:
            verified_at, principal = cached
            if now - verified_at < VERIFIED_CACHE_SECONDS:
                self._verified.move_to_end(token)
                return principal  # its expiry is checked wherever it is used
            del self._verified[token]
        try:
            principal = await self.verify(token)
        except TokenRefused as refused:
            return Principal(refused=f"the bearer token was refused: {refused}")
        self._verified[token] = (now, principal)
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return principal

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise TokenRefused("it is not a JWT") from error
        algorithm = header.get("alg")
        key: Any
        if algorithm == HS256 and self.secret is not None:
            key = self.secret
            algorithms = [HS256]
        elif self.keys is not None and algorithm in self.keys.algorithms:
            kid = header.get("kid")
            key = await self.keys.key(kid if isinstance(kid, str) else None)
            algorithms = [str(algorithm)]
        else:
            raise TokenRefused(f"tokens signed with {algorithm!r} are not accepted here")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway,
                options={
                    "require": ["sub", "exp"],
                    "verify_aud": self.audience is not None,
                    "verify_iss": self.issuer is not None,
                },
            )
        except jwt.ExpiredSignatureError as error:
            raise TokenRefused("it has expired") from error
        except jwt.PyJWTError as error:
            raise TokenRefused(str(error)) from error
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise TokenRefused("its sub claim must be a non-empty string")
        return Principal(
            subject=subject,
            roles=self._roles(claims),
            expires_at=float(claims["exp"]) + self.leeway,
        )

    def _roles(self, claims: Mapping[str, Any]) -> frozenset[str]:
        value: Any = claims
        for part in self.roles_claim:
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, str):
            value = value.split()
        if not isinstance(value, list):
            return frozenset()
        return frozenset(r for r in value if isinstance(r, str)) & ROLES


def signing_secret(settings: Settings) -> str | None:
    """The HS256 secret: the configured one, else (without a JWKS URL) the data dir's."""
    if settings.shop_auth_secret is not None:
        return settings.shop_auth_secret.get_secret_value()
    if settings.shop_auth_jwks_url:
        return None
    return load_or_create_secret(settings.shop_data_dir)


def load_or_create_secret(data_dir: Path) -> str:
    """The development secret in ``data_dir``, created (mode 0600) if it is not there.

    Several processes may start at once: the secret is written to a private temporary
    file and linked into place, so every process reads the same complete secret.
    """
    path = data_dir / SECRET_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        temporary = data_dir / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_urlsafe(48) + "\n")
            try:
                os.link(temporary, path)
                log.info("created a development signing secret in %s", path)
            except FileExistsError:
                pass
        finally:
            temporary.unlink(missing_ok=True)
    secret = path.read_text().strip()
    if not secret:
        raise RuntimeError(f"{path} is empty; delete it to get a new development secret")
    return secret


def authenticator(settings: Settings) -> JwtAuthenticator:
    if settings.shop_auth_secret is None and not settings.shop_auth_jwks_url:
        log.warning(
            "tokens are checked with the development secret in %s (set SHOP_AUTH_JWKS_URL "
            "in production); mint one with `cqrs-shop token --admin` or "
            "`--customer ID` and send it as 'Authorization: Bearer <token>'",
            settings.shop_data_dir / SECRET_FILE,
        )
    return JwtAuthenticator(
        secret=signing_secret(settings),
        jwks_url=settings.shop_auth_jwks_url,
        algorithms=settings.shop_auth_algorithms,
        issuer=settings.shop_auth_issuer,
        audience=settings.shop_auth_audience,
        roles_claim=settings.shop_auth_roles_claim,
        leeway=settings.shop_auth_leeway,
    )


def mint(
    secret: str,
    subject: str,
    roles: Iterable[str],
    ttl: float,
    *,
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    """An HS256 token for development, scripts and tests (``cqrs-shop token``)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "roles": sorted(roles),
        "iat": now,
        "exp": now + max(int(ttl), 1),
    }
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm=HS256)
