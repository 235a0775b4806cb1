"""Merging a batch's guarded updates of one document into one update."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pymongo import UpdateMany

from domain.events import RecordedEvent
from projections.projection import Write, coalesce, guarded, insert_once


def at(position: int) -> RecordedEvent:
    return RecordedEvent(position, f"e{position}", "Test", "Thing", "k", 1, {},
                         datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip


def update(position: int, change: dict[str, Any], key: str = "k") -> Write:
    return guarded("things", key, at(position), change)


def shape(write: Write) -> tuple[Any, ...]:
    return write.key, write.guard, write.update


def test_increments_of_one_document_add_up_under_the_first_guard() -> None:
    [merged] = coalesce([update(3, {"$inc": {"n": 1}}), update(5, {"$inc": {"n": 2, "m": 1}})])
    assert shape(merged) == ("k", 3, {"$set": {"version": 5}, "$inc": {"n": 3, "m": 1}})
    assert merged.operation._filter == {"_id": "k", "version": {"$lt": 3}}


def test_a_set_then_an_increment_folds_into_the_set_and_a_later_set_wins() -> None:
    [merged] = coalesce([
        update(1, {"$set": {"n": 10}}), update(2, {"$inc": {"n": 5, "m": 1}}),
        update(3, {"$set": {"m": 0, "s": "x"}}),
    ])  # fmt: skip
    assert merged.update == {"$set": {"n": 15, "m": 0, "s": "x", "version": 3}}


def test_documents_keep_their_own_order_and_other_documents_stay_apart() -> None:
    writes = coalesce([
        update(1, {"$inc": {"n": 1}}, "a"), update(2, {"$inc": {"n": 1}}, "b"),
        update(3, {"$inc": {"n": 1}}, "a"),
    ])  # fmt: skip
    assert [shape(w) for w in writes] == [
        ("a", 1, {"$set": {"version": 3}, "$inc": {"n": 2}}),
        ("b", 2, {"$set": {"version": 2}, "$inc": {"n": 1}}),
    ]


def test_an_insert_or_a_many_document_update_ends_a_run() -> None:
    many = Write("things", UpdateMany({}, {"$set": {"x": 1}}))
    writes = coalesce([
        update(1, {"$inc": {"n": 1}}), insert_once("things", "k", {"n": 0}),
        update(2, {"$inc": {"n": 1}}), many, update(3, {"$inc": {"n": 1}}),
        update(4, {"$inc": {"n": 1}}),
    ])  # fmt: skip
    assert [w.guard for w in writes] == [1, None, 2, None, 3]
    assert writes[-1].update == {"$set": {"version": 4}, "$inc": {"n": 2}}


def test_overlapping_paths_are_not_merged() -> None:
    writes = coalesce([update(1, {"$set": {"a": {"b": 1}}}), update(2, {"$inc": {"a.b": 1}})])
    assert [w.guard for w in writes] == [1, 2]


def test_pushes_of_each_lists_append_in_order_and_other_pushes_stay_apart() -> None:
    [merged] = coalesce([
        update(1, {"$push": {"orders": {"$each": ["a"]}}}),
        update(2, {"$push": {"orders": {"$each": ["b", "c"]}}, "$inc": {"n": 1}}),
    ])  # fmt: skip
    assert merged.update == {
        "$set": {"version": 2}, "$inc": {"n": 1}, "$push": {"orders": {"$each": ["a", "b", "c"]}},
    }  # fmt: skip
    plain = coalesce([update(1, {"$push": {"orders": "a"}}), update(2, {"$push": {"orders": "b"}})])
    assert [w.guard for w in plain] == [1, 2]
    clash = coalesce([update(1, {"$push": {"o": {"$each": [1]}}}), update(2, {"$set": {"o": []}})])
    assert [w.guard for w in clash] == [1, 2]


def test_bounds_keep_the_extreme_and_unsets_merge_where_nothing_else_is_touched() -> None:
    writes = coalesce([
        update(1, {"$set": {"b.0.x": 1}, "$max": {"top": 0}, "$min": {"low": 0}}),
        update(2, {"$set": {"b.2.y": 2}, "$max": {"top": 2}, "$min": {"low": 2},
                   "$unset": {"b.0": ""}}),  # removes what the first one set: not merged
        update(3, {"$set": {"b.2.z": 3}, "$max": {"top": 1}, "$unset": {"old": ""}}),
    ])  # fmt: skip
    assert [w.guard for w in writes] == [1, 2]
    assert writes[1].update == {
        "$set": {"b.2.y": 2, "b.2.z": 3, "version": 3},
        "$max": {"top": 2},
        "$min": {"low": 2},
        "$unset": {"b.0": "", "old": ""},
    }


def test_what_one_update_cannot_say_is_not_merged() -> None:
    for first, then in (
        ({"$unset": {"b.0": ""}}, {"$set": {"b.0.x": 1}}),  # set again after removal
        ({"$set": {"n": 1}}, {"$max": {"n": 3}}),  # a bound over a set value
        ({"$max": {"n": 1}}, {"$min": {"n": 0}}),
        ({"$inc": {"n": 1}}, {"$unset": {"n": ""}}),
        ({"$unset": {"a.y": ""}}, {"$unset": {"a": ""}}),  # paths MongoDB calls conflicting
        ({"$max": {"a.x": 1}}, {"$set": {"a": 1}}),
        ({"$set": {"a": {"y": 1}}}, {"$unset": {"a.y": ""}}),
        ({"$set": {"c.d": 1}}, {"$unset": {"c.d": ""}}),  # would lose the parent c: {}
    ):
        assert len(coalesce([update(1, first), update(2, then)])) == 2, (first, then)


class Conflicting(Exception):
    """MongoDB would refuse the update (paths that overlap, a number expected)."""


def apply(document: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """One update as MongoDB applies it, for the operators ``coalesce`` merges."""
    paths = [path for fields in change.values() for path in fields]
    for i, path in enumerate(paths):
        for other in paths[i + 1 :]:
            if path == other or path.startswith(other + ".") or other.startswith(path + "."):
                raise Conflicting(path, other)
    result = copy.deepcopy(document)
    for op, fields in change.items():
        for path, value in fields.items():
            *parents, name = path.split(".")
            holder = result
            for part in parents:
                if part not in holder:
                    if op == "$unset":
                        break
                    holder[part] = {}
                holder = holder[part]
                if not isinstance(holder, dict):
                    raise Conflicting(path)
            else:
                current = holder.get(name)
                if op == "$unset":
                    holder.pop(name, None)
                elif op == "$set":
                    holder[name] = copy.deepcopy(value)
                elif op == "$push":
                    if not isinstance(current or [], list):
                        raise Conflicting(path)
                    holder[name] = [*(current or []), *value["$each"]]
                else:
                    if current is not None and not isinstance(current, int):
                        raise Conflicting(path)
                    if op == "$inc":
                        holder[name] = (current or 0) + value
                    else:
                        pick = max if op == "$max" else min
                        holder[name] = value if current is None else pick(current, value)
    return result


# Each path holds one kind of value, as a projection's documents do: numbers (set,
# counted, kept at a maximum or minimum), a sub-document ("a", replaced whole) and a
# list ("c.d", pushed to); any path may be unset. A change touches a path at most once,
# and not "a" beside "a.x": MongoDB refuses an update whose paths overlap.
NUMBERS = st.integers(0, 9)
OPERATIONS = {
    "a": st.sampled_from([("$set", {"z": 1}), ("$unset", "")]),
    "c.d": st.one_of(
        st.builds(lambda n: ("$push", {"$each": [n]}), NUMBERS), st.just(("$unset", ""))
    ),
    **{
        path: st.one_of(
            st.builds(lambda n: ("$set", n), NUMBERS),
            st.builds(lambda n: ("$inc", n), st.integers(1, 3)),
            st.builds(lambda n: ("$max", n), NUMBERS),
            st.builds(lambda n: ("$min", n), NUMBERS),
            st.just(("$unset", "")),
        )
        for path in ("a.x", "a.y", "b", "version2")
    },
}


def _overlapping(paths: list[str]) -> bool:
    return "a" in paths and any(p.startswith("a.") for p in paths)


def _change(parts: list[tuple[str, tuple[str, Any]]]) -> dict[str, Any]:
    change: dict[str, dict[str, Any]] = {}
    for path, (op, value) in parts:
        change.setdefault(op, {})[path] = value
    return change


CHANGE = (
    st.lists(
        st.sampled_from(sorted(OPERATIONS)).flatmap(
            lambda path: st.tuples(st.just(path), OPERATIONS[path])
        ),
        min_size=1, max_size=3, unique_by=lambda part: part[0],
    )
    .filter(lambda parts: not _overlapping([path for path, _ in parts]))
    .map(_change)
)  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(st.lists(CHANGE, min_size=2, max_size=4))
def test_merged_updates_do_exactly_what_they_do_one_after_the_other(
    changes: list[dict[str, Any]],
) -> None:
    writes = [update(n + 1, change) for n, change in enumerate(changes)]
    start = {"_id": "k", "version": 0, "a": {"x": 1}, "b": 5}
    expected = start
    conflicting = False
    try:
        for write in writes:
            assert write.update is not None
            expected = apply(expected, write.update)
    except Conflicting:
        conflicting = True
    assume(not conflicting)  # else not something a projection would write
    merged = start
    for write in coalesce(writes):
        assert write.update is not None
        merged = apply(merged, write.update)  # never conflicting
    assert merged == expected


def test_shells_go_first_once_and_updates_merge_across_them() -> None:
    shell = insert_once("things", "k", {"n": 0, "version": 0}, shell=True)
    writes = coalesce([
        update(1, {"$set": {"a": 1}}), shell, update(2, {"$set": {"b": 1}}), shell,
        update(3, {"$set": {"c": 1}}),
    ])  # fmt: skip
    assert [w.shell for w in writes] == [True, False]
    assert writes[1].update == {"$set": {"a": 1, "b": 1, "c": 1, "version": 3}}
