"""The policy table against the served schema: every root field has a policy, every
policy names a root field, and a field without one is refused to everyone.

The field lists are read from the schema (graphql-core's view of ``build_schema()``),
so a field added tomorrow is checked without editing this file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import strawberry
from graphql import GraphQLSchema

from bench.server import BenchMutation, BenchQuery
from domain.identity import ADMIN_ROLE, Principal
from schema.build import ShopSchema, build_schema
from schema.mutations import Mutation
from schema.policy import (
    ADMINS,
    ANYONE,
    FORBIDDEN,
    OWN_ORDER,
    DuplicatePolicy,
    OwnCustomer,
    Policy,
    merged,
)
from schema.queries import Query
from schema.types import CommandResult

ROOTS = ("Query", "Mutation", "Subscription")
ADMIN_PRINCIPAL = Principal("admin", frozenset({ADMIN_ROLE}))


def root_fields(schema: GraphQLSchema) -> list[str]:
    """``"Type.field"`` for every field of the query, mutation and subscription roots."""
    roots = (schema.query_type, schema.mutation_type, schema.subscription_type)
    return [f"{root.name}.{name}" for root in roots if root is not None for name in root.fields]


def unpoliced(schema: ShopSchema) -> list[str]:
    return [name for name in root_fields(schema._schema) if name not in schema.policies]


SERVED = build_schema()
SERVED_FIELDS = root_fields(SERVED._schema)


class Context:
    """What the policy check reads from a request's context."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal


async def execute(schema: strawberry.Schema, document: str, principal: Principal) -> Any:
    return await schema.execute(document, context_value=Context(principal))


def test_the_served_schema_has_the_roots_and_fields_the_table_is_about() -> None:
    """Guards the generated checks below against reading an empty or renamed schema."""
    graphql = SERVED._schema
    roots = (graphql.query_type, graphql.mutation_type, graphql.subscription_type)
    assert [t.name if t is not None else None for t in roots] == list(ROOTS)
    assert {"Query.product", "Mutation.placeOrder", "Subscription.events"} <= set(SERVED_FIELDS)
    assert len(SERVED_FIELDS) == len(set(SERVED_FIELDS)) >= 26


@pytest.mark.parametrize("field", SERVED_FIELDS)
def test_every_root_field_of_the_served_schema_has_a_policy(field: str) -> None:
    assert field in SERVED.policies, (
        f"{field} has no entry in the served policy table (schema.policy.POLICIES or its "
        "feature's schema module's POLICIES): it is refused to everyone, "
        "admins included; add the policy the issue gives it"
    )


def test_no_policy_names_a_field_the_schema_does_not_have() -> None:
    stale = sorted(set(SERVED.policies) - set(SERVED_FIELDS))
    assert not stale, f"policies for fields the served schema does not have: {stale}"


def test_a_field_given_a_policy_by_two_tables_is_refused_loudly() -> None:
    """A feature's schema module cannot quietly change a row of the shop's table, nor
    another feature's: joining them names every field given twice."""
    shop = {"Query.product": ANYONE, "Query.order": OWN_ORDER}
    feature = {"Query.product": ADMINS, "Query.order": ADMINS, "Query.wishlist": ADMINS}
    with pytest.raises(DuplicatePolicy, match=r"for Query\.order, Query\.product$"):
        merged(shop, feature)
    with pytest.raises(DuplicatePolicy, match=r"for Query\.product$"):
        build_schema(policies={"Query.product": ADMINS})
    assert merged(shop, {"Query.wishlist": ADMINS}) == {**shop, "Query.wishlist": ADMINS}


# The issue's policy, written out independently of schema.policy.
PUBLIC = {
    "Query.product", "Query.productBySku", "Query.products", "Query.topProducts",
    "Subscription.productUpdated", "Mutation.registerCustomer",
}  # fmt: skip
OWN_CUSTOMER_ARGUMENT = {
    "Query.customer": "id",
    "Query.orderHistory": "customer_id",
    "Mutation.placeOrder": "input.customer_id",
    "Mutation.renameCustomer": "id",
    "Mutation.updateCustomerAddress": "id",
    "Query.wishlist": "customer_id",
}
# A customer for its own id, admins not: a wish list is the customer's to change.
CUSTOMER_ITSELF_ARGUMENT = {
    "Mutation.addToWishlist": "customer_id",
    "Mutation.removeFromWishlist": "customer_id",
}
OWN_ORDERS = {"Query.order", "Subscription.orderUpdated", "Mutation.cancelOrder"}


def expected_policy(field: str) -> Policy:
    if field in PUBLIC:
        return ANYONE
    if field in OWN_CUSTOMER_ARGUMENT:
        return OwnCustomer(OWN_CUSTOMER_ARGUMENT[field])
    if field in CUSTOMER_ITSELF_ARGUMENT:
        return OwnCustomer(CUSTOMER_ITSELF_ARGUMENT[field], admins=False)
    if field in OWN_ORDERS:
        return OWN_ORDER
    return ADMINS


@pytest.mark.parametrize("field", SERVED_FIELDS)
def test_each_root_field_has_the_policy_the_issue_gives_it(field: str) -> None:
    assert SERVED.policies.get(field) == expected_policy(field), field


def test_the_missing_policy_check_finds_a_field_added_without_one() -> None:
    """The generated test above can fail: a root field added without a policy is found."""

    @strawberry.type(name="Query")
    class Extended(Query):
        @strawberry.field
        def unguarded(self) -> bool:
            return True

    assert unpoliced(SERVED) == []
    assert unpoliced(build_schema(Extended)) == ["Query.unguarded"]


# Extra root fields that record whether their resolver ran. Named like the served
# roots ("Query", "Mutation"): the policy is looked up by "<root type's GraphQL
# name>.<field>", and a subclass named otherwise has no policy for any field (see
# test_the_bench_schema_applies_its_policies below).
RESOLVED: list[str] = []


@strawberry.type(name="Query")
class ExtraQuery(Query):
    @strawberry.field
    def secret(self) -> str:
        RESOLVED.append("secret")
        return "the secret"


@strawberry.type(name="Mutation")
class ExtraMutation(Mutation):
    @strawberry.mutation
    def wipe(self) -> CommandResult:
        RESOLVED.append("wipe")
        return CommandResult(success=True, id=None, version=None, aggregate_version=None, errors=[])

    @strawberry.mutation
    def flag(self) -> bool:
        RESOLVED.append("flag")
        return True


@pytest.fixture(autouse=True)
def _forget_resolved() -> None:
    RESOLVED.clear()


async def test_a_root_query_field_without_a_policy_is_refused_to_an_admin() -> None:
    schema = build_schema(ExtraQuery, ExtraMutation)
    assert "Query.secret" in unpoliced(schema)
    result = await execute(schema, "{ secret }", ADMIN_PRINCIPAL)
    assert result.data is None
    assert [(e.path, e.extensions) for e in result.errors or []] == [
        (["secret"], {"code": FORBIDDEN})
    ]
    assert RESOLVED == []


async def test_a_root_mutation_without_a_policy_is_refused_to_an_admin_in_its_result() -> None:
    schema = build_schema(ExtraQuery, ExtraMutation)
    result = await execute(
        schema, "mutation { wipe { success id version errors { code field } } }", ADMIN_PRINCIPAL
    )
    assert result.errors is None, result.errors
    assert result.data == {
        "wipe": {"success": False, "id": None, "version": None,
                 "errors": [{"code": FORBIDDEN, "field": None}]}
    }  # fmt: skip
    assert RESOLVED == []


async def test_the_same_extra_fields_answer_once_they_have_a_policy() -> None:
    """The refusals above are about the missing policy, not about the extra fields."""
    policies = {"Query.secret": ADMINS, "Mutation.wipe": ADMINS, "Mutation.flag": ADMINS}
    schema = build_schema(ExtraQuery, ExtraMutation, policies=policies)
    assert unpoliced(schema) == []
    query = await execute(schema, "{ secret }", ADMIN_PRINCIPAL)
    mutation = await execute(schema, "mutation { wipe { success } flag }", ADMIN_PRINCIPAL)
    assert (query.errors, mutation.errors) == (None, None)
    assert query.data == {"secret": "the secret"}
    assert mutation.data == {"wipe": {"success": True}, "flag": True}
    assert RESOLVED == ["secret", "wipe", "flag"]


async def test_a_non_command_mutation_without_a_policy_is_refused_with_forbidden() -> None:
    schema = build_schema(ExtraQuery, ExtraMutation)
    result = await execute(schema, "mutation { flag }", ADMIN_PRINCIPAL)
    assert RESOLVED == []
    assert result.data is None
    assert [(e.path, e.extensions) for e in result.errors or []] == [
        (["flag"], {"code": FORBIDDEN})
    ]


# bench/server.py's schema, built exactly as it builds it: its root types are subclasses
# named BenchQuery and BenchMutation, and it gives policies for "Query.noop" and
# "Mutation.noop".
BENCH_POLICIES: Mapping[str, Policy] = {"Query.noop": ANYONE, "Mutation.noop": ADMINS}
ANONYMOUS = Principal()


@pytest.mark.parametrize(
    ("document", "principal", "expected"),
    [
        ("{ noop }", ANONYMOUS, {"noop": True}),
        ("mutation { noop }", ADMIN_PRINCIPAL, {"noop": True}),
        (
            'mutation { restockProduct(id: "p", quantity: 1) { success errors { code } } }',
            ANONYMOUS,
            {"restockProduct": {"success": False, "errors": [{"code": "UNAUTHENTICATED"}]}},
        ),
    ],
    ids=["anonymous-noop-query", "admin-noop-mutation", "anonymous-restock-answers-in-result"],
)
async def test_the_bench_schema_applies_its_policies(
    document: str, principal: Principal, expected: dict[str, Any]
) -> None:
    schema = build_schema(BenchQuery, BenchMutation, policies=BENCH_POLICIES)
    result = await execute(schema, document, principal)
    assert result.errors is None, result.errors
    assert result.data == expected
