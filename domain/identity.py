"""Who is asking, as every layer sees it: the caller (:class:`Principal`), the role
names, and what turns a request's ``Authorization`` value into a caller
(:class:`Authenticator`).

Verifying tokens is ``app.auth``'s business (JWT, keys, secrets); what each role may
do is ``schema.policy``'s. This module knows neither, so ``schema`` and ``domain`` can
speak of callers without importing the application.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

ADMIN_ROLE = "admin"
CUSTOMER_ROLE = "customer"
ROLES = frozenset({ADMIN_ROLE, CUSTOMER_ROLE})


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: anonymous, a verified token's subject and roles, or a refused token."""

    subject: str | None = None
    roles: frozenset[str] = frozenset()
    expires_at: float | None = None
    # Why the token the caller presented was refused; None when it sent none or a good one.
    refused: str | None = None

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles and self.valid()

    @property
    def customer_id(self) -> str | None:
        """The customer this caller acts as, if it holds the customer role."""
        return self.subject if CUSTOMER_ROLE in self.roles and self.valid() else None

    def valid(self, now: float | None = None) -> bool:
        """Authenticated, and its token not expired (a socket's token expires while open)."""
        if self.subject is None or self.refused is not None:
            return False
        return self.expires_at is None or (now or time.time()) < self.expires_at

    def why_not_valid(self) -> str:
        if self.refused is not None:
            return self.refused
        if self.subject is None:
            return "this needs a bearer token (Authorization: Bearer <token>)"
        return "the bearer token has expired"

    @property
    def order_scope(self) -> str | None:
        """The only customer whose orders this caller may see: None for an admin, its own
        id for a customer, and for anyone else an id no order has.

        Decided by the verified roles alone, never by the clock: the policy admitted the
        request when it began, and a token that expires while the request waits (for a
        ``minVersion``, say) must not widen what it sees. (``customer_id`` and
        ``is_admin`` turn None and False at expiry; an admin's None means "every order",
        a customer's None must never.)
        """
        if self.subject is None or self.refused is not None:
            return NO_ORDERS
        if ADMIN_ROLE in self.roles:
            return None
        return self.subject if CUSTOMER_ROLE in self.roles else NO_ORDERS

    @property
    def idempotency_scope(self) -> str:
        """Idempotency keys are per caller: another caller's key is not this caller's retry.

        Anonymous callers share one scope (nothing tells them apart: use random keys), but
        never the store's raw key space, so no client can forge another scope's stored key.
        """
        return f"sub:{self.subject}" if self.valid() else "anonymous"


ANONYMOUS = Principal()
# The order scope of a caller who may see no order: no customer id is empty.
NO_ORDERS = ""


class Authenticator(Protocol):
    """Turns an ``Authorization`` value (a header or a WebSocket connection parameter)
    into the caller it names: :data:`ANONYMOUS` for none, a refused
    :class:`Principal` for a bad one (``app.auth.JwtAuthenticator``)."""

    async def principal(self, authorization: str | None) -> Principal: ...
