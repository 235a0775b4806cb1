"""The schema's document caches, on the real schema."""

from __future__ import annotations

from strawberry.extensions.validation_cache import _get_validate_cache

from schema.build import DOCUMENT_CACHE_SIZE, build_schema


async def test_a_repeated_document_is_validated_once() -> None:
    schema, cache = build_schema(), _get_validate_cache(DOCUMENT_CACHE_SIZE)
    document = "query Repeated { __typename }"
    await schema.execute(document)
    before = cache.cache_info()
    for _ in range(3):
        assert (await schema.execute(document)).errors is None
    after = cache.cache_info()
    assert (after.hits - before.hits, after.misses - before.misses) == (3, 0)
