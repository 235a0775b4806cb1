"""Builds the Strawberry schema with its caches and limits."""

from __future__ import annotations

import logging

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    ParserCache,
    QueryDepthLimiter,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext
from strawberry.utils.logging import StrawberryLogger

from schema.mutations import Mutation
from schema.queries import Query
from schema.scalars import SCALARS
from schema.subscriptions import Subscription

log = logging.getLogger(__name__)

# Parsing and validating a document costs ~1 ms; most clients send the same few.
DOCUMENT_CACHE_SIZE = 1024
MAX_QUERY_DEPTH = 12
DEPTH_RULES = QueryDepthLimiter(max_depth=MAX_QUERY_DEPTH).validation_rules


# Answers the client is meant to act on; they are not server faults.
EXPECTED_CODES = frozenset({"NOT_YET_CONSISTENT", "BAD_USER_INPUT", "NOT_FOUND"})


class ShopSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Logs server faults; expected answers (invalid documents, coded errors) at debug."""
        for error in errors:
            code = (error.extensions or {}).get("code")
            if code in EXPECTED_CODES or error.original_error is None:
                log.debug("GraphQL error %s: %s", code or "INVALID_DOCUMENT", error.message)
            else:
                StrawberryLogger.error(error, execution_context)


def build_schema(query: type = Query, mutation: type = Mutation) -> strawberry.Schema:
    """The served schema; the benchmarks pass subclasses of the root types with no-op fields."""
    return ShopSchema(
        query=query,
        mutation=mutation,
        subscription=Subscription,
        config=StrawberryConfig(scalar_map=SCALARS),
        # Factories: a fresh extension per request; the two caches are shared module-wide.
        # The depth rule is built once: the validation cache is keyed by the rule
        # classes, and QueryDepthLimiter makes a new class per instance, which made
        # every request miss the cache and validate again (two thirds of a request).
        extensions=[
            lambda: ParserCache(maxsize=DOCUMENT_CACHE_SIZE),
            lambda: ValidationCache(maxsize=DOCUMENT_CACHE_SIZE),
            lambda: AddValidationRules(DEPTH_RULES),
        ],
    )


def print_schema() -> str:
    return build_schema().as_str() + "\n"
