"""Who may call what: one table, deny by default.

Every root field (query, mutation, subscription) is looked up by ``"Type.field"`` in
the served table: the shop's rows, :data:`POLICIES`, and each feature schema module's
own (``schema.wishlist.POLICIES``), which ``schema.build`` joins with :func:`merged`.
A field missing from it is refused to everyone, admins included, and
``tests/unit/test_policy.py`` fails for it. The check runs before the field's
resolver, so a refused command writes nothing and a refused read reads nothing.

Refusals:

- ``UNAUTHENTICATED``: the field needs a caller and there is none, or its token was
  refused or has expired;
- ``FORBIDDEN``: the caller is known but not allowed.

Mutations answer them in ``CommandResult.errors``; queries and subscriptions as a
GraphQL error with ``extensions.code``.

Orders are the one resource whose owner is not in the request: a customer may ask
for any order id, and the resolver (or, for ``cancelOrder``, the command handler in
the write model's transaction) answers another customer's order exactly like a
missing one, so ids cannot be probed for existence.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from graphql import GraphQLError, OperationType
from strawberry.extensions import FieldExtension
from strawberry.types import Info

from domain.identity import ANONYMOUS, Principal
from schema.context import Refusal
from schema.types import CommandResult, ErrorCode, UserError

UNAUTHENTICATED = "UNAUTHENTICATED"
FORBIDDEN = "FORBIDDEN"


class Policy:
    """Decides one root field for one caller and the field's arguments."""

    description = ""

    def refusal(self, principal: Principal, arguments: Mapping[str, Any]) -> Refusal | None:
        raise NotImplementedError

    @property
    def needs_token(self) -> bool:
        """Whether an allowed call depends on the caller's token (and ends when it expires)."""
        return True


def _unauthenticated(principal: Principal) -> Refusal:
    return Refusal(UNAUTHENTICATED, principal.why_not_valid())


class Anyone(Policy):
    description = "anyone, without a token"

    def refusal(self, principal: Principal, arguments: Mapping[str, Any]) -> Refusal | None:
        return None

    @property
    def needs_token(self) -> bool:
        return False


class Admins(Policy):
    description = "admins"

    def refusal(self, principal: Principal, arguments: Mapping[str, Any]) -> Refusal | None:
        if not principal.valid():
            return _unauthenticated(principal)
        if principal.is_admin:
            return None
        return Refusal(FORBIDDEN, "only an admin may do this")


@dataclass(frozen=True)
class OwnCustomer(Policy):
    """A customer whose id is the argument at ``path`` (dotted, Python names), and admins
    unless ``admins`` is false: what only the customer decides (its wish list), an admin
    may read but not change."""

    path: str
    admins: bool = True

    @property
    def description(self) -> str:  # type: ignore[override]
        if self.admins:
            return f"admins; a customer for its own id ({self.path})"
        return f"a customer for its own id ({self.path}); not admins"

    def refusal(self, principal: Principal, arguments: Mapping[str, Any]) -> Refusal | None:
        if not principal.valid():
            return _unauthenticated(principal)
        if self.admins and principal.is_admin:
            return None
        if principal.customer_id is not None and principal.customer_id == _at(arguments, self.path):
            return None
        if self.admins:
            return Refusal(FORBIDDEN, "a customer may only do this for its own customer id")
        return Refusal(FORBIDDEN, "only the customer may do this, for its own customer id")


class OwnOrder(Policy):
    """Admins, and customers; another customer's order answers like a missing one."""

    description = "admins; a customer for its own orders (others' look missing)"

    def refusal(self, principal: Principal, arguments: Mapping[str, Any]) -> Refusal | None:
        if not principal.valid():
            return _unauthenticated(principal)
        if principal.is_admin or principal.customer_id is not None:
            return None
        return Refusal(FORBIDDEN, "only an admin or a customer may do this")


def _at(arguments: Mapping[str, Any], path: str) -> Any:
    value: Any = arguments
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else getattr(value, part, None)
    return value


ANYONE = Anyone()
ADMINS = Admins()
OWN_ORDER = OwnOrder()

POLICIES: Mapping[str, Policy] = {
    # Browsing the catalogue, and signing up.
    "Query.product": ANYONE,
    "Query.productBySku": ANYONE,
    "Query.products": ANYONE,
    "Query.topProducts": ANYONE,
    "Subscription.productUpdated": ANYONE,
    "Mutation.registerCustomer": ANYONE,
    # A customer's own data.
    "Query.customer": OwnCustomer("id"),
    "Query.orderHistory": OwnCustomer("customer_id"),
    "Query.order": OWN_ORDER,
    "Subscription.orderUpdated": OWN_ORDER,
    "Mutation.placeOrder": OwnCustomer("input.customer_id"),
    "Mutation.cancelOrder": OWN_ORDER,
    "Mutation.renameCustomer": OwnCustomer("id"),
    "Mutation.updateCustomerAddress": OwnCustomer("id"),
    # Running the shop.
    "Query.shippingQueue": ADMINS,
    "Query.dashboard": ADMINS,
    "Query.auditTrail": ADMINS,
    "Query.projections": ADMINS,
    "Subscription.dashboardUpdated": ADMINS,
    "Subscription.events": ADMINS,
    "Mutation.createProduct": ADMINS,
    "Mutation.updateProduct": ADMINS,
    "Mutation.changeProductPrice": ADMINS,
    "Mutation.restockProduct": ADMINS,
    "Mutation.discontinueProduct": ADMINS,
    "Mutation.shipOrder": ADMINS,
    "Mutation.rebuildProjections": ADMINS,
    "Mutation.resumeProjection": ADMINS,
}

NO_POLICY = Refusal(FORBIDDEN, "no policy allows this field")


class DuplicatePolicy(ValueError):
    """Two tables give one root field a policy each."""


def merged(*tables: Mapping[str, Policy]) -> dict[str, Policy]:
    """One table of the rows of ``tables``; a field in two of them raises
    :class:`DuplicatePolicy` rather than letting either silently win."""
    table: dict[str, Policy] = {}
    for rows in tables:
        if twice := sorted(table.keys() & rows.keys()):
            raise DuplicatePolicy(f"more than one policy for {', '.join(twice)}")
        table.update(rows)
    return table


def decide(
    policies: Mapping[str, Policy], name: str, principal: Principal, arguments: Mapping[str, Any]
) -> Refusal | None:
    policy = policies.get(name)
    if policy is None:
        return NO_POLICY
    return policy.refusal(principal, arguments)


class Authorize(FieldExtension):
    """Runs the field's policy before its resolver; one instance serves every root field.

    The table comes from the schema (``ShopSchema.policies``), so a schema with extra
    root fields (the benchmark's no-ops) brings its own entries.
    """

    def _check(self, info: Info, arguments: Mapping[str, Any]) -> Refusal | None:
        return decide(_policies(info), _name(info), _principal(info), arguments)

    def _refuse(self, info: Info, refusal: Refusal) -> Any:
        if info.operation.operation is OperationType.MUTATION and _answers_commands(info):
            error = UserError(
                code=ErrorCode(refusal.code), message=refusal.message, field=refusal.field
            )
            return CommandResult.failed([error])
        raise GraphQLError(refusal.message, extensions={"code": refusal.code})

    def resolve(self, next_: Callable[..., Any], source: Any, info: Info, **kwargs: Any) -> Any:
        refusal = self._check(info, kwargs)
        if refusal is not None:
            return self._refuse(info, refusal)
        return next_(source, info, **kwargs)

    async def resolve_async(
        self, next_: Callable[..., Any], source: Any, info: Info, **kwargs: Any
    ) -> Any:
        refusal = self._check(info, kwargs)
        if refusal is not None:
            return self._refuse(info, refusal)
        result = next_(source, info, **kwargs)
        if inspect.isasyncgen(result):
            principal = _principal(info)
            policy = _policies(info)[_name(info)]
            if policy.needs_token and principal.expires_at is not None:
                generator = cast("AsyncGenerator[Any, None]", result)
                return until_expiry(generator, principal.expires_at)
            return result
        if inspect.isawaitable(result):
            return await result
        return result


# The table names root fields by their role, whatever a schema calls its root types
# (the benchmark's are BenchQuery and BenchMutation).
_ROOTS = {
    OperationType.QUERY: "Query",
    OperationType.MUTATION: "Mutation",
    OperationType.SUBSCRIPTION: "Subscription",
}


def _name(info: Info) -> str:
    return f"{_ROOTS[info.operation.operation]}.{info.field_name}"


def _answers_commands(info: Info) -> bool:
    """Whether the mutation answers a CommandResult (whose errors carry refusals)."""
    return info.return_type is CommandResult


def _policies(info: Info) -> Mapping[str, Policy]:
    policies: Mapping[str, Policy] = getattr(info.schema, "policies", POLICIES)
    return policies


def _principal(info: Info) -> Principal:
    principal: Principal = getattr(info.context, "principal", ANONYMOUS)
    return principal


async def until_expiry(
    source: AsyncGenerator[Any, None], expires_at: float
) -> AsyncGenerator[Any, None]:
    """``source``'s items until the token it was allowed with expires; then an error."""
    try:
        while True:
            remaining = expires_at - time.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                async with asyncio.timeout(remaining):
                    item = await anext(source)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise GraphQLError(
                    "the bearer token has expired; subscribe again with a new one",
                    extensions={"code": UNAUTHENTICATED},
                ) from None
            yield item
    finally:
        await source.aclose()
