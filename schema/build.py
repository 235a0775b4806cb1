"""Builds the Strawberry schema with its caches and limits."""

from __future__ import annotations

import strawberry
from strawberry.extensions import ParserCache, QueryDepthLimiter, ValidationCache
from strawberry.schema.config import StrawberryConfig

from schema.mutations import Mutation
from schema.queries import Query
from schema.scalars import SCALARS
from schema.subscriptions import Subscription

# Parsing and validating a document costs ~1 ms; most clients send the same few.
DOCUMENT_CACHE_SIZE = 1024
MAX_QUERY_DEPTH = 12


def build_schema() -> strawberry.Schema:
    return strawberry.Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        config=StrawberryConfig(scalar_map=SCALARS),
        # Factories: a fresh extension per request; the two caches are shared module-wide.
        extensions=[
            lambda: ParserCache(maxsize=DOCUMENT_CACHE_SIZE),
            lambda: ValidationCache(maxsize=DOCUMENT_CACHE_SIZE),
            lambda: QueryDepthLimiter(max_depth=MAX_QUERY_DEPTH),
        ],
    )


def print_schema() -> str:
    return build_schema().as_str() + "\n"
