"""Finding a selected field, for fields computed only when asked for."""

from __future__ import annotations

from strawberry.types.nodes import FragmentSpread, InlineFragment, SelectedField

from schema.queries import selects


def field(name: str, *children: object) -> SelectedField:
    return SelectedField(name, {}, {}, list(children))  # type: ignore[arg-type]


def test_a_field_is_found_directly_or_in_fragments_but_not_deeper() -> None:
    edges = field("edges", field("node", field("totalCount")))
    assert not selects([edges], "totalCount")
    assert selects([edges, field("totalCount")], "totalCount")
    spread = FragmentSpread("F", "ProductConnection", {}, [field("totalCount")])
    assert selects([edges, InlineFragment(None, [spread], {})], "totalCount")
