"""The schema's document cache, on the real schema."""

from __future__ import annotations

import gc
import tracemalloc

import pytest
from graphql import GraphQLSyntaxError, Lexer, Source, TokenKind, parse, print_ast
from graphql.language.parser import Parser
from hypothesis import given
from hypothesis import strategies as st

import schema.limits as limits_module
from schema.build import build_schema
from schema.limits import CommentLexer, DocumentCache, Limits, count_tokens, document_bytes

SHAPES = {
    "small": '{ product(id: "x") { id name priceCents } }',
    "page": "query Q($after: String) { products(first: 100, after: $after) { totalCount "
    "edges { cursor node { id sku name description category priceCents status stockOnHand "
    "stockReserved stockAvailable unitsSold createdAt updatedAt version } } "
    "pageInfo { hasNextPage endCursor } } }",
    "comments": ("# " + "x" * 100 + "\n") * 1500 + '{ product(id: "x") { id } }',
    "long string": '{ product(id: "' + "x" * 200_000 + '") { id } }',
    "many fields": "{ "
    + " ".join(f'a{i}: product(id: "x") {{ id name }}' for i in range(30))
    + " __typename" * 300
    + " }",
}


async def test_a_repeated_document_is_parsed_and_validated_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    schema = build_schema()
    document = "query Repeated { __typename }"
    await schema.execute(document)
    calls = {"parse": 0, "validate": 0}

    def counted(name: str, real: object) -> object:
        def call(*args: object, **kwargs: object) -> object:
            calls[name] += 1
            return real(*args, **kwargs)  # type: ignore[operator]

        return call

    monkeypatch.setattr(limits_module, "_parse", counted("parse", limits_module._parse))
    monkeypatch.setattr(
        limits_module, "validate_document", counted("validate", limits_module.validate_document)
    )
    for _ in range(3):
        assert (await schema.execute(document)).errors is None
    assert calls == {"parse": 0, "validate": 0}
    invalid = "query Invalid { nothingHere }"
    for _ in range(3):
        result = await schema.execute(invalid)
        assert result.errors is not None
        assert "nothingHere" in result.errors[0].message
    assert calls == {"parse": 1, "validate": 1}


@pytest.mark.parametrize("shape", SHAPES)
def test_a_document_is_charged_at_least_what_it_holds(shape: str) -> None:
    query = SHAPES[shape]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        document = parse(query)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert document is not None
    charged = document_bytes(query, count_tokens(query, 10**6))
    assert held + len(query) <= charged  # the text itself is charged too


def test_distinct_documents_stay_within_the_budget() -> None:
    """Comment-padded or string-padded documents fill a parse cache by count alone."""
    cache = DocumentCache(1024 * 1024)
    limits = Limits()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(200):
            padding = f"# {i} " + "x" * 2_000 + "\n"
            cache.parse(padding * 5 + f'{{ product(id: "{i}") {{ id }} }}', limits)
            cache.parse(f'{{ product(id: "{i}{"y" * 5_000}") {{ id }} }}', limits)
        gc.collect()  # parsed documents are cycles of tokens: garbage until collected
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert cache.bytes <= cache.max_bytes
    assert 0 < len(cache) < 200
    assert grown <= cache.max_bytes * 1.25


def test_a_document_bigger_than_a_sixteenth_of_the_cache_is_not_kept() -> None:
    cache = DocumentCache(128 * 1024)
    cache.parse('{ product(id: "' + "x" * 2000 + '") { id } }', Limits())
    assert len(cache) == 0
    cache.parse("{ __typename }", Limits())
    assert len(cache) == 1


def _tokens(lexer: Lexer) -> list[tuple[str, int, int, str | None]] | str:
    """Every token ``lexer`` reads, comments included, or the syntax error it ends with."""
    read: list[tuple[str, int, int, str | None]] = []
    try:
        token = lexer.token
        while token.kind != TokenKind.EOF:
            token = lexer.read_next_token(token.end)
            read.append((token.kind.value, token.start, token.end, token.value))
    except GraphQLSyntaxError as error:
        return f"{read} then {error.message}"
    return read


COMMENT_TEXT = st.text(
    alphabet=st.sampled_from(["#", "\n", "\r", " ", "a", "{", "}", "é", "😀", "\ud83d", "\ude00"]),
    max_size=40,
)


@given(text=COMMENT_TEXT)
def test_the_comment_lexer_reads_the_tokens_graphql_core_reads(text: str) -> None:
    """Comments that end at a line end (\\n, \\r) or the end, that hold characters beyond
    the BMP, surrogate pairs and lone surrogates (a syntax error in either)."""
    assert _tokens(CommentLexer(Source(text))) == _tokens(Lexer(Source(text)))


def test_a_comment_padded_document_parses_to_what_graphql_core_parses() -> None:
    padding = ("# " + "x" * 998 + "\n") * 60 + "#\ud83d\ude00 a pair\r\n# 😀 one"
    document = f"{padding}\n{{ __typename }}"
    parsed = limits_module.parse_within(document, 2000)
    assert print_ast(parsed) == print_ast(parse(document))
    assert parsed.loc is not None
    assert parsed.loc.start_token.next is not None
    assert parsed.loc.start_token.next.kind == TokenKind.COMMENT


async def test_a_document_nested_past_the_parsers_recursion_is_a_syntax_error() -> None:
    """250 levels are 750 tokens, under the token limit: graphql-core's parse answers
    "nested too deeply", and so must the parse with the comment lexer, not an internal
    error from the RecursionError."""
    document = "{" + "a{" * 250 + "b" + "}" * 251
    with pytest.raises(GraphQLSyntaxError, match="nested too deeply"):
        parse(document)
    with pytest.raises(GraphQLSyntaxError, match="nested too deeply"):
        limits_module.parse_within(document, 2000)
    result = await build_schema().execute(document)
    assert result.errors is not None
    [error] = result.errors
    assert "nested too deeply" in error.message, error
    assert (error.extensions or {}).get("code") != "INTERNAL_SERVER_ERROR", error


def test_a_comment_limit_given_to_the_parser_still_counts_comments() -> None:
    text = "#a\n#b\n#c\n{ a }"
    for lexer in (Lexer, CommentLexer):
        source = Source(text)
        with pytest.raises(GraphQLSyntaxError, match="more than 1 comments"):
            Parser(source, max_comments=1, lexer=lexer(source)).parse_document()
