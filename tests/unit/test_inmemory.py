"""The in-memory model of the store that verify replays into: what it applies, what it refuses.

That it applies writes exactly as the real store does is held in
``tests/integration/test_verify.py``; here, the rules one by one and the refusals.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pymongo import DeleteOne, InsertOne, ReplaceOne, UpdateMany, UpdateOne

from domain.events import RecordedEvent
from projections.dashboard import DashboardProjection
from projections.inmemory import MemoryStore, UnsupportedWrite
from projections.projection import Write, guarded, insert_once


def at(position: int) -> RecordedEvent:
    return RecordedEvent(position, f"e{position}", "Test", "Thing", "k", 1, {},
                         datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip


def store(*writes: Write | Any) -> MemoryStore:
    memory = MemoryStore()
    for write in writes:
        memory.apply(write if isinstance(write, Write) else Write("things", write))
    return memory


def test_a_guarded_update_applies_once_and_never_backwards() -> None:
    memory = store(
        insert_once("things", "k", {"n": 1, "version": 1}),
        guarded("things", "k", at(3), {"$inc": {"n": 1}}),
        guarded("things", "k", at(3), {"$inc": {"n": 1}}),  # a replay
        guarded("things", "k", at(2), {"$inc": {"n": 100}}),  # older than the document
        guarded("things", "nobody", at(4), {"$inc": {"n": 1}}),  # no document: no upsert
    )
    assert memory.collections["things"] == {"k": {"_id": "k", "n": 2, "version": 3}}


def test_an_insert_of_an_existing_document_changes_nothing() -> None:
    memory = store(InsertOne({"_id": 1, "a": 1}), InsertOne({"_id": 1, "a": 2}))
    assert memory.find("things", 1) == {"_id": 1, "a": 1}


def test_update_many_sets_dotted_paths_in_every_match_and_only_there() -> None:
    memory = store(
        InsertOne({"_id": "o1", "customerId": "c", "customer": {"name": "A"}, "version": 1}),
        InsertOne({"_id": "o2", "customerId": "c", "customer": {"name": "A"}, "version": 5}),
        InsertOne({"_id": "o3", "customerId": "d", "customer": {"name": "D"}, "version": 1}),
        UpdateMany({"customerId": "c", "version": {"$lt": 4}},
                   {"$set": {"customer.name": "B", "version": 4}}),
    )  # fmt: skip
    names = {
        k: (d["customer"]["name"], d["version"]) for k, d in memory.collections["things"].items()
    }
    assert names == {"o1": ("B", 4), "o2": ("A", 5), "o3": ("D", 1)}


def test_comparisons_match_only_values_of_their_own_kind_and_null_matches_absent() -> None:
    memory = store(
        InsertOne({"_id": 1, "version": "0"}),  # a string is never $lt a number
        InsertOne({"_id": 2}),
        InsertOne({"_id": 3, "gone": None}),
        UpdateMany({"version": {"$lt": 5}}, {"$set": {"lt": True}}),
        UpdateMany({"version": None}, {"$set": {"null": True}}),
        UpdateMany({"gone": {"$in": [None, 7]}, "_id": {"$gte": 2}}, {"$set": {"in": True}}),
        UpdateMany({"gone": {"$exists": True}}, {"$set": {"exists": True}}),
    )
    documents = memory.collections["things"].items()
    flags = {k: sorted(set(d) - {"_id", "version", "gone"}) for k, d in documents}
    assert flags == {1: [], 2: ["in", "null"], 3: ["exists", "in", "null"]}


def test_operators_do_what_the_store_does() -> None:
    memory = store(
        InsertOne({"_id": "k", "n": 1, "top": 3, "low": 3, "gone": 1, "list": [1]}),
        UpdateOne({"_id": "k"}, {
            "$inc": {"n": 2, "fresh": 5}, "$max": {"top": 2, "newMax": 9}, "$min": {"low": 1},
            "$unset": {"gone": "", "never.there": ""}, "$set": {"a.b.c": [1]},
            "$push": {"list": {"$each": [2, 3]}, "other": {"x": 1}},
        }),
    )  # fmt: skip
    assert memory.find("things", "k") == {
        "_id": "k", "n": 3, "fresh": 5, "top": 3, "newMax": 9, "low": 1,
        "a": {"b": {"c": [1]}}, "list": [1, 2, 3], "other": [{"x": 1}],
    }  # fmt: skip


def test_seed_documents_are_upserted_once() -> None:
    memory = MemoryStore()
    memory.seed(DashboardProjection())
    memory.apply(guarded("dashboard", "dashboard", at(1), {"$inc": {"productCount": 1}}))
    memory.seed(DashboardProjection())
    document = memory.find("dashboard", "dashboard")
    assert document is not None
    assert (document["productCount"], document["version"]) == (1, 1)


def test_values_are_held_as_the_store_gives_them_back() -> None:
    berlin = timezone(timedelta(hours=1))
    memory = store(InsertOne({"_id": 1, "at": datetime(2026, 1, 1, 13, 0, 0, 123456, berlin),
                              "pair": (1, 2)}))  # fmt: skip
    assert memory.find("things", 1) == {
        "_id": 1, "at": datetime(2026, 1, 1, 12, 0, 0, 123000, UTC), "pair": [1, 2],
    }  # fmt: skip


def test_an_update_the_store_refuses_leaves_the_document_as_it_was() -> None:
    memory = store(InsertOne({"_id": 1, "s": "text", "n": 1}))
    with pytest.raises(UnsupportedWrite, match=r"\$inc of s"):
        memory.apply(Write("things", UpdateOne({"_id": 1}, {"$set": {"n": 2}, "$inc": {"s": 1}})))
    assert memory.find("things", 1) == {"_id": 1, "s": "text", "n": 1}


@pytest.mark.parametrize(
    "operation",
    [
        UpdateOne({"_id": 1}, {"$mul": {"n": 2}}),
        UpdateOne({"_id": 1}, {"$rename": {"n": "m"}}),
        UpdateOne({"_id": 1}, {"$addToSet": {"list": 1}}),
        UpdateOne({"_id": 1}, {"$push": {"list": {"$each": [1], "$slice": -5}}}),
        UpdateOne({"_id": 1}, [{"$set": {"n": 1}}]),
        UpdateOne({"$or": [{"_id": 1}]}, {"$set": {"n": 1}}),
        UpdateOne({"_id": 1, "n": {"$ne": 2}}, {"$set": {"n": 1}}),
        UpdateOne({"_id": 1, "list": 1}, {"$set": {"n": 1}}),  # array matching
        UpdateOne({"_id": 1}, {"$set": {"list.0": 5}}),  # into an array
        UpdateOne({"_id": 1}, {"$set": {"n.x": 5}}),  # into a number: refused by the store
        UpdateOne({"_id": 1}, {"$set": {"a": 1}, "$inc": {"a.b": 1}}),  # conflicting paths
        UpdateOne({"_id": 1}, {"$set": {"n": 1}}, array_filters=[{"x": 1}]),
        UpdateOne({"n": 1}, {"$set": {"m": 1}}),  # matches two: which one is the store's choice
        UpdateOne({"n": 9}, {"$set": {"m": 1}}, upsert=True),  # the store would make an ObjectId
        InsertOne({"a": 1}),
        ReplaceOne({"_id": 1}, {"n": 2}),
        DeleteOne({"_id": 1}),
    ],
)
def test_writes_outside_the_model_are_refused(operation: Any) -> None:
    memory = store(InsertOne({"_id": 1, "n": 1, "list": [1]}), InsertOne({"_id": 2, "n": 1}))
    with pytest.raises(UnsupportedWrite):
        memory.apply(Write("things", operation))
