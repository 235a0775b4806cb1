"""The relay's memory of the versions it wrote: bounded, newest kept, forgettable."""

from __future__ import annotations

from projections.relay import VersionCache


def test_it_keeps_the_newest_versions_per_collection_and_forgets_on_demand() -> None:
    known = VersionCache(size=3)
    known.remember("products", {"a": 1, "b": 2, "c": 3})
    known.remember("products", {"a": 4})  # touched again: now the newest
    known.remember("products", {"d": 5})
    assert known.of("products") == {"c": 3, "a": 4, "d": 5}
    known.remember("orders", {"o": 9})
    known.forget("products")
    assert (known.of("products"), known.of("orders")) == ({}, {"o": 9})
    known.clear()
    assert known.of("orders") == {}
