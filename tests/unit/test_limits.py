"""The document limits (schema.limits) on the served schema: what a real frontend sends
passes with the defaults; what an abuser sends is refused, naming the limit it broke."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from graphql import DocumentNode, GraphQLSchema, get_introspection_query, validate

import schema.limits as limits_module
from schema.build import build_schema
from schema.limits import LIMIT_EXCEEDED, LimitExceeded, Limits, check, count_tokens, parse_within

SCHEMA: GraphQLSchema = build_schema()._schema
DEFAULTS = Limits()

PRODUCT_FIELDS = """id sku name description category priceCents status stockOnHand
  stockReserved stockAvailable unitsSold createdAt updatedAt version"""
ADDRESS_FIELDS = "line1 line2 city postalCode country"
ORDER_FIELDS = f"""id customer {{ id name email }} status
  lines {{ productId sku productName quantity unitPriceCents lineTotalCents }}
  itemCount totalCents shippingAddress {{ {ADDRESS_FIELDS} }} placedAt shippedAt
  trackingNumber cancelledAt cancelReason version"""

PRODUCTS_PAGE = f"""query ProductsPage($n: Int!, $after: String) {{
  products(first: $n, after: $after, sort: NAME_ASC) {{
    totalCount
    pageInfo {{ hasNextPage endCursor }}
    edges {{ cursor node {{ {PRODUCT_FIELDS} }} }}
  }}
}}"""
ORDER_HISTORY_PAGE = f"""query OrderHistory($customer: ID!, $n: Int!) {{
  orderHistory(customerId: $customer, first: $n) {{
    totalCount
    pageInfo {{ hasNextPage endCursor }}
    edges {{ cursor node {{ {ORDER_FIELDS} }} }}
  }}
}}"""
HOME_WITH_FRAGMENTS = """query Home($n: Int!) {
  dashboard { ...Figures }
  topProducts(limit: 10) { ...Seller }
  products(first: $n, filter: {inStock: true}) {
    pageInfo { ...Page }
    edges { node { ...Card ... on Product { stockAvailable } } }
  }
}
fragment Figures on Dashboard {
  productCount customerCount orderCount openOrderCount revenueCents version
}
fragment Seller on ProductSales { productId name unitsSold revenueCents }
fragment Page on PageInfo { hasNextPage endCursor }
fragment Card on Product { id name priceCents ...Stock }
fragment Stock on Product { stockAvailable status }
"""
FULL_INTROSPECTION = get_introspection_query(
    descriptions=True,
    specified_by_url=True,
    directive_is_repeatable=True,
    schema_description=True,
    input_value_deprecation=True,
)
PAGE_OF_IDS = "products(first: 100) { edges { node { id } } }"


def passes(query: str, variables: dict[str, Any] | None = None, limits: Limits = DEFAULTS) -> int:
    """The document's cost; fails the test if it is refused or is not a valid document."""
    document = parse_within(query, limits.max_tokens)
    cost = check(SCHEMA, document, None, variables, limits)
    assert validate(SCHEMA, document) == []
    return cost


def refusal(
    query: str, variables: dict[str, Any] | None = None, limits: Limits = DEFAULTS
) -> dict[str, Any]:
    """The refusal's extensions; fails the test if the document passes the limits."""
    with pytest.raises(LimitExceeded) as refused:
        check(SCHEMA, parse_within(query, limits.max_tokens), None, variables, limits)
    extensions: dict[str, Any] = refused.value.extensions or {}
    assert extensions["code"] == LIMIT_EXCEEDED
    assert extensions["limit"] in refused.value.message
    return extensions


def aliased(count: int, selection: str, prefix: str = "a") -> str:
    return " ".join(f"{prefix}{i}: {selection}" for i in range(count))


def nested(depth: int) -> str:
    return "{ " + "node { " * (depth - 1) + "id" + " }" * (depth - 1) + " }"


# What a frontend sends passes with the defaults.


def test_a_full_products_page_of_100_passes() -> None:
    cost = passes(PRODUCTS_PAGE, {"n": 100})
    # 1 + 100 x (totalCount 1 + pageInfo 3 + edges (1 + cursor 1 + node 15)) = 2,101
    assert cost == 2101


def test_a_full_order_history_page_of_100_passes() -> None:
    assert passes(ORDER_HISTORY_PAGE, {"customer": "c1", "n": 100}) <= DEFAULTS.max_cost


def test_the_full_introspection_query_passes() -> None:
    assert passes(FULL_INTROSPECTION) <= DEFAULTS.max_cost


def test_a_document_of_fragments_passes() -> None:
    cost = passes(HOME_WITH_FRAGMENTS, {"n": 100})
    # The fragments' fields count where they are spread: a page of 100 cards costs
    # 100 x (edges 1 + node 1 + 6 fields), so they were not skipped.
    assert 800 < cost <= DEFAULTS.max_cost


def test_every_field_costs_one_times_the_page_sizes_above_it() -> None:
    assert passes("{ " + PAGE_OF_IDS + " }") == 1 + 100 * 3
    # A page size over the largest page counts as the largest page.
    assert passes("{ products(first: 5000) { edges { node { id } } } }") == 1 + 100 * 3
    # No page size given: the field's default (products: 20, topProducts: 10).
    assert passes("{ products { edges { node { id } } } }") == 1 + 20 * 3
    assert passes("{ topProducts { sku name } }") == 1 + 10 * 2


# Refused, each naming the limit it broke.


def test_fifty_aliased_pages_are_refused_by_cost_and_by_aliases() -> None:
    query = "{ " + aliased(50, PAGE_OF_IDS) + " }"
    # One walk, refused at the first limit crossed: the cost (301 a page) passes
    # 5,000 at the 17th alias, before the 31st alias.
    assert refusal(query) == {"code": LIMIT_EXCEEDED, "limit": "SHOP_MAX_COST", "maximum": 5000}
    assert refusal(query, limits=Limits(max_aliases=100))["limit"] == "SHOP_MAX_COST"
    assert refusal(query, limits=Limits(max_cost=10**6)) == {
        "code": LIMIT_EXCEEDED, "limit": "SHOP_MAX_ALIASES", "maximum": 30,
    }  # fmt: skip
    assert passes("{ " + aliased(16, PAGE_OF_IDS) + " }") == 16 * 301


def test_twenty_aliased_pages_of_names_are_refused_by_cost() -> None:
    page = "products(first: 100) { edges { node { id name } } }"
    assert refusal("{ " + aliased(20, page) + " }")["limit"] == "SHOP_MAX_COST"
    assert passes("{ " + aliased(10, page) + " }") == 10 * (1 + 100 * 4)


PAGE_OF_N = "products(first: $n) { edges { node { id name sku description category priceCents } } }"


def test_a_page_size_in_a_variable_counts_at_its_value() -> None:
    query = "query Pages($n: Int!) { " + aliased(10, PAGE_OF_N) + " }"
    assert refusal(query, {"n": 100})["limit"] == "SHOP_MAX_COST"
    assert passes(query, {"n": 5}) == 10 * (1 + 5 * 8)


def test_a_page_size_variable_left_to_its_default_counts_at_that_default() -> None:
    query = "query Pages($n: Int = 100) { " + aliased(10, PAGE_OF_N) + " }"
    # The executor pages by 100: the same cost as passing n = 100, which is refused.
    assert refusal(query, {"n": 100})["limit"] == "SHOP_MAX_COST"
    assert refusal(query, None)["limit"] == "SHOP_MAX_COST"


def test_nesting_deeper_than_12_is_refused() -> None:
    # No type of the schema nests this deep: the limit holds before validation would
    # say so, on unknown fields too.
    assert refusal(nested(13)) == {"code": LIMIT_EXCEEDED, "limit": "SHOP_MAX_DEPTH", "maximum": 12}
    document = parse_within(nested(12), DEFAULTS.max_tokens)
    assert check(SCHEMA, document, None, None, DEFAULTS) == 12


def test_depth_counts_through_fragments() -> None:
    query = nested(10).replace("id", "...Deeper") + (
        " fragment Deeper on Query { node { node { node { id } } } }"
    )
    assert refusal(query)["limit"] == "SHOP_MAX_DEPTH"


def test_thirty_one_aliases_are_refused_and_thirty_pass() -> None:
    assert refusal("{ " + aliased(31, "dashboard { version }") + " }") == {
        "code": LIMIT_EXCEEDED, "limit": "SHOP_MAX_ALIASES", "maximum": 30,
    }  # fmt: skip
    assert passes("{ " + aliased(30, "dashboard { version }") + " }") == 30 * 2


def test_aliases_in_a_fragment_count_at_every_spread() -> None:
    def document(in_fragment: int) -> str:
        figures = aliased(in_fragment, "orderCount", "n")
        return (
            "{ first: dashboard { ...Figures } second: dashboard { ...Figures } }"
            f" fragment Figures on Dashboard {{ {figures} }}"
        )

    # 2 + 2 x 15 = 32 aliases used, though only 17 are written.
    assert refusal(document(15))["limit"] == "SHOP_MAX_ALIASES"
    assert passes(document(14)) > 0  # 2 + 2 x 14 = 30


def test_more_than_2000_tokens_are_refused_and_2000_parse() -> None:
    def document(tokens: int) -> str:
        return "{ " + "a " * (tokens - 2) + "}"

    assert count_tokens(document(2000), 10**6) == 2000
    parse_within(document(2000), DEFAULTS.max_tokens)  # no refusal
    with pytest.raises(LimitExceeded) as refused:
        parse_within(document(2001), DEFAULTS.max_tokens)
    assert refused.value.extensions == {
        "code": LIMIT_EXCEEDED, "limit": "SHOP_MAX_TOKENS", "maximum": 2000,
    }  # fmt: skip


def test_comments_are_tokens_and_commas_are_not() -> None:
    """A parsed document keeps its comments: they cost memory like any other token."""
    assert count_tokens("# a comment of many words\n{ a, b, c }", 100) == 6


def test_a_long_string_argument_is_one_token() -> None:
    words = " ".join(f"word{i}" for i in range(1900))
    query = f'{{ products(filter: {{search: "{words}"}}) {{ totalCount }} }}'
    assert count_tokens(query, 10**6) == 15
    assert passes(query) == 1 + 20 * 1
    block = f'{{ products(filter: {{search: """{words}\n"quoted" \\""" """}}) {{ totalCount }} }}'
    assert count_tokens(block, 10**6) == 15
    assert passes(block) == 21


def test_a_field_repeated_500_times_is_refused() -> None:
    repeated = "{ " + "dashboard { version } " * 500 + "}"
    assert refusal(repeated)["limit"] == "SHOP_MAX_TOKENS"  # 2,002 tokens
    # Under the token limit, the repeats' cost refuses it: the n-th costs n - 1 more.
    assert refusal(repeated, limits=Limits(max_tokens=10_000))["limit"] == "SHOP_MAX_COST"
    assert refusal("{ " + "dashboard { version } " * 400 + "}")["limit"] == "SHOP_MAX_COST"
    assert passes("{ " + "dashboard { version } " * 3 + "}") == 2 + 3 + 4


def test_recursive_introspection_is_refused_past_three_lists() -> None:
    # types → fields → type → fields: three lists, the documented maximum
    # (MAX_INTROSPECTION_LISTS, the depth of the full introspection query's
    # types → fields → args); it answers a few kilobytes.
    three = "{ __schema { types { fields { type { fields { name } } } } } }"
    assert limits_module.MAX_INTROSPECTION_LISTS == 3
    assert passes(three) > 0
    four = "{ __schema { types { fields { type { fields { type { fields { name } } } } } } } }"
    assert refusal(four) == {"code": LIMIT_EXCEEDED, "limit": "introspection", "maximum": 3}
    by_name = '{ __type(name: "Query") { fields { type { fields { args { type { name } } } } } } }'
    assert passes(by_name) > 0
    deeper = (
        '{ __type(name: "Query") { fields { type { fields { type { fields { type { fields'
        " { name } } } } } } } } }"
    )
    assert refusal(deeper)["limit"] == "introspection"
    # Introspection's lists do not escape the limit inside a fragment either.
    in_fragment = (
        "{ __schema { types { ...T } } } fragment T on __Type"
        " { fields { type { fields { type { fields { name } } } } } }"
    )
    assert refusal(in_fragment)["limit"] == "introspection"


def test_fragment_cycles_end_and_validation_reports_them() -> None:
    query = """{ ...A }
      fragment A on Query { dashboard { version } ...B }
      fragment B on Query { ...A topProducts { sku } }"""
    document = parse_within(query, DEFAULTS.max_tokens)
    assert check(SCHEMA, document, None, None, DEFAULTS) > 0
    messages = [error.message for error in validate(SCHEMA, document)]
    assert any("Cannot spread fragment 'A' within itself" in m for m in messages), messages


def bomb(levels: int, leaf: str) -> str:
    """Each fragment spreads the next twice: 2**levels leaves from a small document."""
    fragments = " ".join(
        f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(levels)
    )
    return f"{{ ...F0 }} {fragments} fragment F{levels} on Query {{ {leaf} }}"


class _CountingWalk:
    """Counts the selection sets the limits' walk visits."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.visits = 0
        original = limits_module._Walk.selection_set

        def counted(walk: Any, *args: Any, **kwargs: Any) -> int:
            self.visits += 1
            return original(walk, *args, **kwargs)

        monkeypatch.setattr(limits_module._Walk, "selection_set", counted)


@pytest.fixture
def walk(monkeypatch: pytest.MonkeyPatch) -> _CountingWalk:
    return _CountingWalk(monkeypatch)


def test_a_fragment_bomb_of_fields_is_refused_by_cost(walk: _CountingWalk) -> None:
    assert refusal(bomb(30, "dashboard { version }"))["limit"] == "SHOP_MAX_COST"
    assert walk.visits < 1000


@pytest.mark.parametrize("leaf", ["...Missing", "...F0"])
async def test_a_fragment_bomb_of_nothing_is_answered_without_walking_it_all(
    walk: _CountingWalk, leaf: str
) -> None:
    # The served path: DocumentLimits runs the walk before validation.
    result = await build_schema().execute(bomb(16, leaf))
    assert result.errors
    assert walk.visits < 10_000, f"{walk.visits} selection sets walked"


# The token count stops at the limit: a huge document costs no more than a small one.


def test_a_100_kb_document_is_refused_after_counting_only_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    huge = "{ " + "a " * 50_000 + "}"
    assert len(huge) > 100_000
    assert count_tokens(huge, 10**6) == 50_002
    assert count_tokens(huge, 2000) == 2001  # stopped at max + 1, not the full count

    scanned = 0
    real = limits_module._TOKEN

    class Counting:
        def finditer(self, text: str) -> Iterator[re.Match[str]]:
            nonlocal scanned
            for match in real.finditer(text):
                scanned += 1
                yield match

    def no_parse(*_: object, **__: object) -> DocumentNode:
        raise AssertionError("the parser ran on a document over the token limit")

    monkeypatch.setattr(limits_module, "_TOKEN", Counting())
    monkeypatch.setattr(limits_module, "_parse", no_parse)
    with pytest.raises(LimitExceeded) as refused:
        parse_within(huge + " ", DEFAULTS.max_tokens)  # a text not in parse_within's cache
    assert refused.value.extensions is not None
    assert refused.value.extensions["limit"] == "SHOP_MAX_TOKENS"
    assert scanned == 2001


# Found by review: documents whose cost hides outside the executed operation, or whose
# text makes the pre-parse scan rescan.


@pytest.mark.parametrize(
    "text",
    [
        '"' + '\\"' * 5000,  # an unterminated string full of escaped quotes
        '"""' + 'x\\"' * 5000,  # an unterminated block string
        '"abc\\',  # a string ending in a lone backslash
        '"""abc\\',
    ],
)
def test_every_token_that_starts_to_match_runs_to_its_end(text: str) -> None:
    """Scanning stays linear: an unterminated (block) string is one token to the end of
    its line (document), so no quote inside it starts another scan to the end."""
    match = limits_module._TOKEN.match(text)
    assert match is not None
    assert match.end() == len(text)
    assert count_tokens("{ a(b: " + text, 10**6) == 6  # { a ( b : and the string


def test_an_operation_that_is_not_executed_still_counts() -> None:
    costly = "query B { " + aliased(20, "products(first: 100) { edges { node { id } } }") + " }"
    document = parse_within("query A { __typename } " + costly, DEFAULTS.max_tokens)
    with pytest.raises(LimitExceeded) as refused:
        check(SCHEMA, document, "A", None, DEFAULTS)
    assert (refused.value.extensions or {})["limit"] == "SHOP_MAX_COST"
    # Two operations each within the limit, together over it: the document is refused.
    half = "products(first: 100) { edges { node { id } } } "  # 1 + 100 * 3 = 301
    two = f"query A {{ {half * 1} }} query B {{ " + aliased(9, half.strip()) + " }"
    assert check(SCHEMA, parse_within(f"query A {{ {half} }}", 2000), "A", None, DEFAULTS) < 5000
    with pytest.raises(LimitExceeded):
        check(SCHEMA, parse_within(two + two.replace("query A", "query C").replace(
            "query B", "query D"), 2000), "A", None, DEFAULTS)  # fmt: skip


def test_a_fragment_no_operation_spreads_still_counts() -> None:
    unused = "fragment U on Query { " + aliased(20, PAGE_OF_IDS) + " }"
    assert refusal("{ __typename } " + unused)["limit"] == "SHOP_MAX_COST"


def test_schema_introspection_once_per_document() -> None:
    assert passes(FULL_INTROSPECTION) > 0
    twice = "{ a: __schema { types { name } } b: __schema { types { name } } }"
    assert refusal(twice) == {"code": LIMIT_EXCEEDED, "limit": "introspection", "maximum": 1}


def test_introspection_nesting_through_fragments_is_refused_not_a_recursion_error() -> None:
    fragments = " ".join(
        f"fragment f{i} on __Type {{ " + "ofType { " * 10 + f"...f{i + 1}" + " }" * 10 + " }"
        for i in range(45)
    )
    query = '{ __type(name: "Query") { ...f0 } } ' + fragments + " fragment f45 on __Type { name }"
    extensions = refusal(query, limits=Limits(max_tokens=10_000))
    assert extensions == {"code": LIMIT_EXCEEDED, "limit": "introspection", "maximum": 40}


async def test_top_products_takes_no_more_than_a_page_as_the_cost_assumes() -> None:
    """The cost caps page sizes at SHOP_MAX_PAGE_SIZE; so must every list field."""
    from domain.identity import ANONYMOUS

    class Context:
        principal = ANONYMOUS
        max_page_size = 10
        header_error = None
        header_min_version = None

    result = await build_schema().execute(
        "{ topProducts(limit: 50) { sku } }", context_value=Context()
    )
    assert result.errors is not None
    [error] = result.errors
    assert (error.extensions or {})["code"] == "BAD_USER_INPUT"
    assert "between 0 and 10" in error.message
