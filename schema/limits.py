"""Abuse limits on GraphQL documents, checked before validation and execution.

Validating a document costs about 50 µs per field in graphql-core, and comparing
fields that share a response name (``OverlappingFieldsCanBeMerged``) is quadratic in
their number; executing one costs what its page sizes multiply up to. So the limits
are checked on the parsed document, before it is validated, in one walk:

- **length** of the document's text, comments included (the body limit bounds the
  request, this the part of it that is parsed);
- **tokens**: counted by a regular expression (in C) before the parser runs, which
  stops at the limit, so a huge document is refused in well under a millisecond;
- **depth** of nested fields (introspection's linear ``ofType`` chains aside: its
  list fields may nest at most :data:`MAX_INTROSPECTION_LISTS` deep instead, enough
  for every introspection query GraphiQL and code generators send);
- **aliases**, every use counted (a fragment spread twice counts twice);
- **cost**: every field costs 1, and a field with a page size (``first``, ``limit``)
  multiplies what is below it by that size (capped at the largest page), so 50
  aliases of ``products(first: 100) { ... }`` cost over 5,000 while a full page of
  everything costs under 2,000. The n-th repeat of a response name in one selection
  set costs n - 1 more: what validation's pairwise comparison costs.

Refusals are GraphQL errors with ``extensions.code = LIMIT_EXCEEDED`` and the
setting's name in ``extensions.limit``.

Comments count as tokens: the parser keeps each one (its text, its token) in the
document it returns, so they cost memory like any other token.

Parsed and validated documents are kept in one :class:`DocumentCache`, bounded in
bytes (``SHOP_DOCUMENT_CACHE_BYTES``) by an estimate of what each document holds,
its text included, so no stream of distinct documents can grow the process.
"""

from __future__ import annotations

import re
import sys
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLList,
    GraphQLNamedType,
    GraphQLNonNull,
    GraphQLSchema,
    GraphQLSyntaxError,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    Source,
    Token,
    TokenKind,
    VariableNode,
    get_named_type,
)
from graphql.language.lexer import Lexer
from graphql.language.parser import Parser, nested_too_deeply_error
from graphql.type.introspection import SchemaMetaFieldDef, TypeMetaFieldDef
from graphql.validation import ASTValidationRule
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import validate_document

LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
MAX_INTROSPECTION_LISTS = 3
# Fields nest at most this deep, introspection included (the standard introspection
# query nests about 12): it bounds the walk's recursion, whatever fragments do.
MAX_NESTING = 40
PAGE_ARGUMENTS = ("first", "limit")
# What a parsed document holds, by tracemalloc on documents of every shape (many
# fields, long strings, long comments): its nodes and tokens, about 500 bytes a token,
# and up to twice its text (the source, and token values sliced from it).
BYTES_PER_TOKEN = 700
BYTES_PER_CHARACTER = 2
DOCUMENT_OVERHEAD = 2000

# One alternative per GraphQL token kind (comments included). Every
# alternative that starts matching succeeds, so no input makes the scan rescan: an
# unterminated block string runs to the end of the document, an unterminated string
# to the end of its line (the parser then says what is wrong, once).
_TOKEN = re.compile(
    r'"""(?:[^"\\]|\\[\s\S]?|"(?!""))*(?:"""|\Z)'  # block string
    r'|"(?:[^"\\\n\r]|\\[^\n\r]?)*"?'  # string
    r"|#[^\n\r]*"  # comment
    r"|\.\.\."
    r"|[!$&():=@\[\]{|}]"
    r"|-?[0-9][0-9.eE+-]*"
    r"|[_A-Za-z][_0-9A-Za-z]*"
)


@dataclass(frozen=True, slots=True)
class Limits:
    max_tokens: int = 2000
    max_depth: int = 12
    max_aliases: int = 30
    max_cost: int = 5000
    max_page_size: int = 100
    document_cache_bytes: int = 16 * 1024 * 1024
    max_document_length: int = 65_536


class LimitExceeded(GraphQLError):
    def __init__(self, message: str, setting: str, maximum: int) -> None:
        super().__init__(
            f"{message} (limit: {setting})",
            extensions={"code": LIMIT_EXCEEDED, "limit": setting, "maximum": maximum},
        )


def count_tokens(query: str, stop_after: int) -> int:
    """The document's tokens (comments too), counting no further than ``stop_after`` + 1."""
    count = 0
    for _ in _TOKEN.finditer(query):
        count += 1
        if count > stop_after:
            break
    return count


def _too_many_tokens(max_tokens: int) -> LimitExceeded:
    message = f"the document has more than {max_tokens} tokens"
    return LimitExceeded(message, "SHOP_MAX_TOKENS", max_tokens)


def _too_many_aliases(max_aliases: int) -> LimitExceeded:
    message = f"the document has more than {max_aliases} aliases"
    return LimitExceeded(message, "SHOP_MAX_ALIASES", max_aliases)


def scan(query: str, max_tokens: int, max_aliases: int) -> int:
    """Refuses, before parsing (4 µs a token in graphql-core), a document with too many
    tokens or too many aliases written in it: a name followed by ``:`` outside
    parentheses (inside them, ``name:`` is an argument, a variable or an input field).
    Returns how many tokens it has."""
    tokens = aliases = parentheses = 0
    after_name = False
    for match in _TOKEN.finditer(query):
        first = match.group()[0]
        tokens += 1
        if tokens > max_tokens:
            raise _too_many_tokens(max_tokens)
        if first == "(":
            parentheses += 1
        elif first == ")":
            parentheses = max(parentheses - 1, 0)
        elif first == ":" and after_name and not parentheses:
            aliases += 1
            if aliases > max_aliases:
                raise _too_many_aliases(max_aliases)
        after_name = first.isalpha() or first == "_"
    return tokens


def parse_within(query: str, max_tokens: int, max_aliases: int = 10**9) -> DocumentNode:
    """The parsed document, unless it has more than ``max_tokens`` tokens or
    ``max_aliases`` aliases in its text."""
    return _parse_counted(query, max_tokens, max_aliases)[0]


def _parse_counted(query: str, max_tokens: int, max_aliases: int) -> tuple[DocumentNode, int]:
    tokens = scan(query, max_tokens, max_aliases)
    return _parse(query, max_tokens), tokens


def _parse(query: str, max_tokens: int) -> DocumentNode:
    """graphql-core's ``parse`` with :class:`CommentLexer`: a document nested past the
    interpreter's recursion limit is a syntax error ("nested too deeply"), as there."""
    source = Source(query)
    parser = Parser(source, max_tokens=max_tokens, lexer=CommentLexer(source))
    try:
        try:
            return parser.parse_document()
        except RecursionError:
            pass
        raise nested_too_deeply_error(parser)
    except GraphQLSyntaxError as error:
        if "tokens" in error.message and "Parsing aborted" in error.message:
            raise _too_many_tokens(max_tokens) from None
        raise


# What a comment holds (GraphQL's CommentChar): anything but a line end or a surrogate,
# and surrogates only as a pair.
_COMMENT_RUN = re.compile(r"[^\r\n\ud800-\udfff]*")
_SURROGATE_PAIR = re.compile(r"[\ud800-\udbff][\udc00-\udfff]")


class CommentLexer(Lexer):
    """graphql-core's lexer, reading a comment with a regular expression instead of a
    Python step per character: a document of 60 K characters of comments took ~16 ms of
    CPU to parse (~29 ms on a busy machine), now ~1 ms, and anyone may send one per
    request. It makes the same tokens (``tests/unit/test_schema_limits.py`` compares)."""

    def read_comment(self, start: int) -> Token:
        if self._max_comments is not None:  # counted there; never set by this module
            return super().read_comment(start)
        body = self.source.body
        end = _run_end(body, start + 1)
        while (pair := _SURROGATE_PAIR.match(body, end)) is not None:
            end = _run_end(body, pair.end())
        return self.create_token(TokenKind.COMMENT, start, end, body[start + 1 : end])


def _run_end(body: str, position: int) -> int:
    run = _COMMENT_RUN.match(body, position)
    assert run is not None  # it matches the empty string
    return run.end()


def document_bytes(query: str, tokens: int) -> int:
    """What the cache charges for a document: an estimate that is at least what its
    parsed form holds (``tests/unit/test_schema_limits.py`` measures it)."""
    return (
        sys.getsizeof(query)
        + BYTES_PER_CHARACTER * len(query)
        + (BYTES_PER_TOKEN * tokens + DOCUMENT_OVERHEAD)
    )


class _Entry:
    __slots__ = ("document", "errors", "rules", "size")

    def __init__(self, document: DocumentNode, size: int) -> None:
        self.document = document
        self.size = size
        self.errors: list[GraphQLError] | None = None
        """Its validation errors under ``rules``, once validated."""
        self.rules: tuple[type[ASTValidationRule], ...] = ()


class DocumentCache:
    """Parsed documents by their text, and their validation errors, in at most
    ``max_bytes`` (least recently used first out). A document that would take more than
    a sixteenth of it is parsed every time instead: no single request can push out
    most of what the clients' usual operations need."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def parse(self, query: str, limits: Limits) -> DocumentNode:
        entry = self._entries.get(query)
        if entry is not None:
            self._entries.move_to_end(query)
            return entry.document
        if len(query) > limits.max_document_length:
            maximum = limits.max_document_length
            message = f"the document is longer than {maximum} characters"
            raise LimitExceeded(message, "SHOP_MAX_DOCUMENT_LENGTH", maximum)
        document, tokens = _parse_counted(query, limits.max_tokens, limits.max_aliases)
        size = document_bytes(query, tokens)
        if size <= self.max_bytes // 16:
            self._entries[query] = _Entry(document, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, oldest = self._entries.popitem(last=False)
                self.bytes -= oldest.size
        return document

    def validate(
        self,
        schema: GraphQLSchema,
        query: str,
        document: DocumentNode,
        rules: tuple[type[ASTValidationRule], ...],
    ) -> list[GraphQLError]:
        """``document``'s validation errors against ``schema`` and ``rules`` (the schema's,
        the same for every request), validated once while its text is cached."""
        entry = self._entries.get(query)
        if entry is None or entry.document is not document:
            return validate_document(schema, document, rules)
        if entry.errors is None or entry.rules != rules:
            entry.errors, entry.rules = validate_document(schema, document, rules), rules
        return entry.errors


class _Walk:
    """One pass over the executed operation: its depth, aliases and cost."""

    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: Mapping[str, FragmentDefinitionNode],
        variables: Mapping[str, Any],
        limits: Limits,
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        # What the executor will see: the request's variables over the operation's defaults.
        self.variables = variables
        self.limits = limits
        self.aliases = 0
        self.nesting = 0
        self.schemas = 0
        self.spread: set[str] = set()
        """The fragments the walk reached."""

    def selection_set(
        self,
        node: SelectionSetNode,
        parent: GraphQLNamedType | None,
        depth: int,
        lists: int,
        names: Counter[str] | None = None,
        spreads: frozenset[str] = frozenset(),
    ) -> int:
        names = Counter() if names is None else names
        cost = 0
        for selection in node.selections:
            if isinstance(selection, FieldNode):
                if selection.alias is not None:
                    self.aliases += 1
                    if self.aliases > self.limits.max_aliases:
                        raise _too_many_aliases(self.limits.max_aliases)
                    name = selection.alias.value
                else:
                    name = selection.name.value
                cost += names[name] + self.field(selection, parent, depth, lists)
                names[name] += 1
            elif isinstance(selection, InlineFragmentNode):
                # Every selection costs at least 1, so the walk itself is bounded by the
                # limit: a tree of fragments spreading each other cannot blow it up.
                condition = selection.type_condition
                inner = self._type(condition.name.value) if condition else parent
                cost += 1 + self.selection_set(
                    selection.selection_set, inner, depth, lists, names, spreads
                )
            elif isinstance(selection, FragmentSpreadNode):
                cost += 1
                fragment_name = selection.name.value
                self.spread.add(fragment_name)
                fragment = self.fragments.get(fragment_name)
                if fragment is None or fragment_name in spreads:
                    continue  # validation reports it
                inner = self._type(fragment.type_condition.name.value)
                cost += self.selection_set(
                    fragment.selection_set, inner, depth, lists, names,
                    spreads | {fragment_name},
                )  # fmt: skip
            if cost > self.limits.max_cost:
                self._too_costly(cost)
        return cost

    def field(
        self, node: FieldNode, parent: GraphQLNamedType | None, depth: int, lists: int
    ) -> int:
        self.nesting += 1
        try:
            return self._field_cost(node, parent, depth, lists)
        finally:
            self.nesting -= 1

    def _field_cost(
        self, node: FieldNode, parent: GraphQLNamedType | None, depth: int, lists: int
    ) -> int:
        if self.nesting > MAX_NESTING:
            message = f"fields, introspection included, nest deeper than {MAX_NESTING}"
            raise LimitExceeded(message, "introspection", MAX_NESTING)
        name = node.name.value
        definition = self._field(parent, name)
        if definition is SchemaMetaFieldDef:
            # The whole schema costs what a page of hundreds of rows costs; once is enough.
            self.schemas += 1
            if self.schemas > 1:
                raise LimitExceeded("the document asks for __schema more than once",
                                    "introspection", 1)  # fmt: skip
        introspective = name.startswith("__") or (
            parent is not None and parent.name.startswith("__")
        )
        if introspective:
            if definition is not None and _is_list(definition):
                lists += 1
                if lists > MAX_INTROSPECTION_LISTS:
                    most = MAX_INTROSPECTION_LISTS
                    message = f"introspection lists nest deeper than {most}"
                    raise LimitExceeded(message, "introspection", most)
        else:
            depth += 1
            if depth > self.limits.max_depth:
                most = self.limits.max_depth
                message = f"fields nest deeper than {most} levels"
                raise LimitExceeded(message, "SHOP_MAX_DEPTH", most)
        if node.selection_set is None:
            return 1
        inner = get_named_type(definition.type) if definition is not None else None
        below = self.selection_set(node.selection_set, inner, depth, lists)
        return 1 + self._page_size(node, definition) * below

    def _page_size(self, node: FieldNode, definition: GraphQLField | None) -> int:
        """The field's page size: its ``first`` or ``limit``, given or default, capped."""
        for argument in PAGE_ARGUMENTS:
            declared = definition.args.get(argument) if definition is not None else None
            given = next((a for a in node.arguments or () if a.name.value == argument), None)
            if given is None and declared is None:
                continue
            value: Any = declared.default_value if declared is not None else None
            if given is not None:
                if isinstance(given.value, IntValueNode):
                    value = int(given.value.value)
                elif isinstance(given.value, VariableNode):
                    value = self.variables.get(given.value.name.value, value)
                else:
                    return 1  # null or not a number: the field refuses it
            if isinstance(value, int) and not isinstance(value, bool):
                return max(1, min(value, self.limits.max_page_size))
            return self.limits.max_page_size
        return 1

    def _field(self, parent: GraphQLNamedType | None, name: str) -> GraphQLField | None:
        if name == "__schema" and parent is self.schema.query_type:
            return SchemaMetaFieldDef
        if name == "__type" and parent is self.schema.query_type:
            return TypeMetaFieldDef
        fields = getattr(parent, "fields", None)
        if not isinstance(fields, Mapping):
            return None
        field = fields.get(name)
        return field if isinstance(field, GraphQLField) else None

    def _type(self, name: str) -> GraphQLNamedType | None:
        return self.schema.get_type(name)

    def add(self, cost: int, more: int) -> int:
        """Costs of the document's parts, added up, refused past the limit."""
        if cost + more > self.limits.max_cost:
            self._too_costly(cost + more)
        return cost + more

    def _too_costly(self, cost: int) -> NoReturn:
        most = self.limits.max_cost
        message = (
            f"the query costs more than {most} (every field 1, times the page sizes "
            "above it): ask for smaller pages or fewer fields"
        )
        raise LimitExceeded(message, "SHOP_MAX_COST", most)


def _is_list(definition: GraphQLField) -> bool:
    kind: Any = definition.type
    while isinstance(kind, GraphQLNonNull):
        kind = kind.of_type
    return isinstance(kind, GraphQLList)


def check(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation_name: str | None,
    variables: Mapping[str, Any] | None,
    limits: Limits,
) -> int:
    """The document's cost; raises :class:`LimitExceeded` past depth, aliases or cost.

    Every operation counts, not only the one executed, and so does every fragment no
    operation spreads: validation works through the whole document (some of its rules
    take time quadratic in the fields), so the whole document must be within the
    limits. The executed operation is costed with the request's variables, the others
    with their defaults.
    """
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    executed = _executed(operations, operation_name)
    cost = 0
    walk = _Walk(schema, fragments, {}, limits)
    for operation in operations:
        walk.variables = _values(operation, variables if operation is executed else None)
        root = schema.get_root_type(operation.operation)
        cost = walk.add(cost, walk.selection_set(operation.selection_set, root, 0, 0))
    walk.variables = {}
    for name, fragment in fragments.items():
        if name not in walk.spread:  # validation refuses it, after working through it
            inner = schema.get_type(fragment.type_condition.name.value)
            walk.spread.add(name)
            cost = walk.add(cost, walk.selection_set(fragment.selection_set, inner, 0, 0))
    return cost


def _executed(
    operations: list[OperationDefinitionNode], name: str | None
) -> OperationDefinitionNode | None:
    if name is None:
        return operations[0] if len(operations) == 1 else None
    return next((o for o in operations if o.name is not None and o.name.value == name), None)


def _values(
    operation: OperationDefinitionNode, variables: Mapping[str, Any] | None
) -> dict[str, Any]:
    """What the executor will see: the request's variables over the operation's defaults."""
    values: dict[str, Any] = {
        definition.variable.name.value: int(definition.default_value.value)
        for definition in operation.variable_definitions or ()
        if isinstance(definition.default_value, IntValueNode)
    }
    if isinstance(variables, Mapping):
        values.update(variables)
    return values


class DocumentLimits(SchemaExtension):
    """Parses (cached, token-limited), checks depth, aliases and cost, then validates
    (cached)."""

    def __init__(self, limits: Limits, cache: DocumentCache | None = None) -> None:
        self.limits = limits
        self.cache = DocumentCache(limits.document_cache_bytes) if cache is None else cache

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        if context.query is not None:
            context.graphql_document = self.cache.parse(context.query, self.limits)
        yield

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        document = context.graphql_document
        if document is not None:
            schema: GraphQLSchema = context.schema._schema
            check(schema, document, context.operation_name, context.variables, self.limits)
            if context.query is not None and context.validation_rules:
                # Set, even when empty: Strawberry then skips its own validation.
                context.pre_execution_errors = self.cache.validate(
                    schema, context.query, document, tuple(context.validation_rules)
                )
        yield
