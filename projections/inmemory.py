"""An exact in-memory model of the Mongo writes projections make: what ``cqrs-shop verify``
replays the outbox into (see ``projections.verify``).

It models only what the projections write, exactly as MongoDB and FerretDB 1.24 apply
it, and refuses anything else with :class:`UnsupportedWrite`: a projection that starts
writing another operator must be taught here first, rather than be verified against a
model that guesses. ``tests/integration/test_verify.py`` holds the model to the real
store, write for write.

- ``InsertOne`` with an ``_id``; a duplicate key changes nothing (the relay ignores it).
- ``UpdateOne`` / ``UpdateMany`` by filter, with ``upsert`` (seed documents).
- Filters: equality (``None`` also matches a missing field), ``$eq``, ``$in``, ``$lt``,
  ``$lte``, ``$gt``, ``$gte`` (numbers, strings and dates, each compared only with
  its own kind, as MongoDB's type brackets do) and ``$exists``, on dotted paths
  through embedded documents.
- Updates: ``$set``, ``$unset``, ``$inc``, ``$max``, ``$min``, ``$push`` (one value or
  ``$each``) and ``$setOnInsert``, applied to a copy: all of one update or nothing.

Refused: paths into arrays (their matching and update rules differ), ``$push``
modifiers other than ``$each``, replacement documents and pipelines, collations,
array filters, hints, an ``UpdateOne`` whose filter matches several documents (the
store picks one in its own order), and what the store itself refuses (paths that
conflict, ``$inc`` of a non-number, a field inside a scalar).

Values enter through a BSON round trip with the read store client's options, so the
model holds what the store gives back: datetimes in UTC to the millisecond, tuples as
lists, large integers as ``Int64``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import bson
from bson.codec_options import CodecOptions
from pymongo import InsertOne, UpdateMany, UpdateOne

from projections.projection import Projection, Write

Document = dict[str, Any]
CODEC: CodecOptions[Document] = CodecOptions(document_class=dict, tz_aware=True, tzinfo=UTC)
INT64 = (-(2**63), 2**63 - 1)


class UnsupportedWrite(ValueError):
    """A write this model cannot apply exactly as the store would (or the store refuses)."""


class _Missing:
    def __repr__(self) -> str:
        return "(absent)"


MISSING: Any = _Missing()
"""A field that is not there (``None`` is a field holding null)."""


def as_stored(value: Any) -> Any:
    """``value`` as the read store gives it back: a BSON round trip."""
    return bson.decode(bson.encode({"v": value}), CODEC)["v"]


class MemoryStore:
    """Collections of documents by ``_id``, changed only by :meth:`apply`."""

    def __init__(self) -> None:
        self.collections: dict[str, dict[Any, Document]] = {}

    def collection(self, name: str) -> dict[Any, Document]:
        return self.collections.setdefault(name, {})

    def find(self, collection: str, key: Any) -> Document | None:
        return self.collections.get(collection, {}).get(key)

    def seed(self, projection: Projection) -> None:
        """The documents a projection expects to exist, written as the relay writes them
        (``relay.prepare_collections``)."""
        seeds: dict[str, list[Document]] = getattr(projection, "seed_documents", {})
        for collection, documents in seeds.items():
            for document in documents:
                fields = {k: v for k, v in document.items() if k != "_id"}
                upsert = UpdateOne({"_id": document["_id"]}, {"$setOnInsert": fields}, upsert=True)
                self.apply(Write(collection, upsert))

    def apply(self, write: Write) -> None:
        """Applies one write as the store (through the relay) would; raises
        :class:`UnsupportedWrite` for anything outside the model."""
        documents = self.collection(write.collection)
        operation = write.operation
        try:
            if isinstance(operation, InsertOne):
                _insert(documents, operation._doc)
            elif isinstance(operation, UpdateOne | UpdateMany):
                _update(documents, operation, many=isinstance(operation, UpdateMany))
            else:
                raise UnsupportedWrite(f"a {type(operation).__name__}")
        except UnsupportedWrite as error:
            raise UnsupportedWrite(f"{write.collection}: {error} in {operation!r}") from error


def _insert(documents: dict[Any, Document], given: Mapping[str, Any]) -> None:
    document: Document = as_stored(dict(given))
    if "_id" not in document:
        raise UnsupportedWrite("an insert without an _id (the store would make an ObjectId)")
    key = _key(document["_id"])
    if key not in documents:  # else a duplicate key: the relay ignores it, as a replay
        documents[key] = document


def _key(value: Any) -> Any:
    """An ``_id`` usable as a dict key with the store's meaning of equal ids."""
    if isinstance(value, bool | float | dict | list):
        # True == 1 for a dict, not for the store; 1.0 and 1 are one id for both, but
        # the store keeps the type first inserted: not worth modelling
        raise UnsupportedWrite(f"an _id of type {type(value).__name__}")
    return value


def _update(documents: dict[Any, Document], operation: UpdateOne | UpdateMany, many: bool) -> None:
    for option in ("_collation", "_array_filters", "_hint", "_sort"):
        if getattr(operation, option, None) is not None:
            raise UnsupportedWrite(f"the option {option.lstrip('_')}")
    if not isinstance(operation._doc, Mapping):
        raise UnsupportedWrite("an update pipeline")
    query: Document = as_stored(dict(operation._filter))
    change: Document = as_stored(dict(operation._doc))
    _check_update(change)
    matched = _matching(documents, query)
    if len(matched) > 1 and not many:
        raise UnsupportedWrite(f"an UpdateOne whose filter matches {len(matched)} documents")
    for key in matched:
        documents[key] = _updated(documents[key], change, inserting=False)
    if not matched and operation._upsert:
        document = _updated(_upserted(query), change, inserting=True)
        documents[_key(document["_id"])] = document


# --- filters -----------------------------------------------------------------------------


def _matching(documents: dict[Any, Document], query: Document) -> list[Any]:
    key = query.get("_id", MISSING)
    if key is not MISSING and not _operators(key):
        candidates = [key] if _key(key) in documents else []  # the common case: by _id
    else:
        candidates = list(documents)
    return [k for k in candidates if _matches(documents[k], query)]


def _operators(condition: Any) -> bool:
    """Whether ``condition`` is a document of query operators (``{"$lt": 3}``)."""
    if not isinstance(condition, dict) or not condition:
        return False
    dollars = [name.startswith("$") for name in condition]
    if any(dollars) and not all(dollars):
        raise UnsupportedWrite(f"a condition mixing operators and fields: {condition!r}")
    return all(dollars)


def _matches(document: Document, query: Document) -> bool:
    for path, condition in query.items():
        if path.startswith("$"):
            raise UnsupportedWrite(f"the query operator {path}")
        value = _get(document, path)
        if _operators(condition):
            if not all(_test(op, value, argument) for op, argument in condition.items()):
                return False
        elif not _equal(value, condition):
            return False
    return True


def _get(document: Document, path: str) -> Any:
    value: Any = document
    for part in path.split("."):
        if isinstance(value, list):
            raise UnsupportedWrite(f"a query on {path}, through an array")
        if not isinstance(value, dict):
            return MISSING
        value = value.get(part, MISSING)
    if isinstance(value, list):
        raise UnsupportedWrite(f"a query on the array {path}")
    return value


def _bracket(value: Any) -> str:
    """The kind of value MongoDB compares ``value`` with (numbers with numbers, ...)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, datetime):
        return "date"
    if value is None:
        return "null"
    return type(value).__name__


ORDERED = {"number", "string", "date"}
COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "$lt": lambda a, b: bool(a < b),
    "$lte": lambda a, b: bool(a <= b),
    "$gt": lambda a, b: bool(a > b),
    "$gte": lambda a, b: bool(a >= b),
}


def _test(op: str, value: Any, argument: Any) -> bool:
    if op == "$eq":
        return _equal(value, argument)
    if op == "$in":
        if not isinstance(argument, list):
            raise UnsupportedWrite("$in without a list")
        return any(_equal(value, item) for item in argument)
    if op == "$exists":
        return (value is not MISSING) == bool(argument)
    if op in COMPARISONS:
        if _bracket(argument) not in ORDERED:
            raise UnsupportedWrite(f"{op} with a {_bracket(argument)}")
        if value is MISSING or _bracket(value) != _bracket(argument):
            return False
        return COMPARISONS[op](value, argument)
    raise UnsupportedWrite(f"the query operator {op}")


def _equal(value: Any, argument: Any) -> bool:
    """Query equality: null matches a missing field too; numbers of any type by value."""
    if isinstance(argument, dict | list):
        raise UnsupportedWrite("equality with a document or an array")
    if argument is None:
        return value is MISSING or value is None
    if value is MISSING:
        return False
    return _bracket(value) == _bracket(argument) and bool(value == argument)


# --- updates -----------------------------------------------------------------------------


def _check_update(change: Document) -> None:
    """Refuses what the model does not know, and what the store would refuse."""
    if not change:
        raise UnsupportedWrite("an empty update")
    unknown = sorted(set(change) - set(OPERATORS))
    if unknown:
        raise UnsupportedWrite(f"the update operator(s) {', '.join(unknown)}")
    paths: list[str] = []
    for op, fields in change.items():
        if not isinstance(fields, dict) or not fields:
            raise UnsupportedWrite(f"{op} without fields")
        for path in fields:
            parts = path.split(".")
            if not all(parts) or any(p.startswith("$") for p in parts):
                raise UnsupportedWrite(f"the path {path!r}")
            if parts[0] == "_id":
                raise UnsupportedWrite("an update of _id")
            paths.append(path)
    for i, path in enumerate(paths):
        for other in paths[i + 1 :]:
            if path == other or path.startswith(other + ".") or other.startswith(path + "."):
                raise UnsupportedWrite(f"conflicting paths {path} and {other}")


def _updated(document: Document, change: Document, *, inserting: bool) -> Document:
    result = copy.deepcopy(document)
    for op, fields in change.items():
        if op == "$setOnInsert" and not inserting:
            continue
        for path, value in fields.items():
            OPERATORS[op](result, path, value)
    return result


def _upserted(query: Document) -> Document:
    """The document an upsert starts from: the filter's equalities."""
    document: Document = {}
    for path, condition in query.items():
        if _operators(condition):
            if set(condition) != {"$eq"}:
                continue
            condition = condition["$eq"]
        _set(document, path, condition)
    if "_id" not in document:
        raise UnsupportedWrite("an upsert without an _id (the store would make an ObjectId)")
    return document


def _parent(document: Document, path: str, create: bool) -> tuple[Document | None, str]:
    """The embedded document holding ``path``'s last field, made on the way if ``create``."""
    *parents, name = path.split(".")
    holder = document
    for part in parents:
        child = holder.get(part, MISSING)
        if child is MISSING:
            if not create:
                return None, name
            child = holder[part] = {}
        elif isinstance(child, list):
            raise UnsupportedWrite(f"the path {path}, through an array")
        elif not isinstance(child, dict):
            if not create:
                return None, name  # $unset below a scalar: nothing to remove
            raise UnsupportedWrite(f"the path {path}, through a {_bracket(child)}")
        holder = child
    return holder, name


def _set(document: Document, path: str, value: Any) -> None:
    holder, name = _parent(document, path, create=True)
    assert holder is not None
    holder[name] = copy.deepcopy(value)


def _unset(document: Document, path: str, _value: Any) -> None:
    holder, name = _parent(document, path, create=False)
    if holder is not None:
        holder.pop(name, None)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _inc(document: Document, path: str, value: Any) -> None:
    holder, name = _parent(document, path, create=True)
    assert holder is not None
    current = holder.get(name, MISSING)
    if not _number(value) or not (current is MISSING or _number(current)):
        raise UnsupportedWrite(f"$inc of {path} ({current!r}) by {value!r}")
    result = value if current is MISSING else current + value
    if isinstance(result, int) and not INT64[0] <= result <= INT64[1]:
        raise UnsupportedWrite(f"$inc of {path} overflows a 64-bit integer")
    holder[name] = as_stored(result)


def _bound(pick: str) -> Callable[[Document, str, Any], None]:
    def apply(document: Document, path: str, value: Any) -> None:
        holder, name = _parent(document, path, create=True)
        assert holder is not None
        current = holder.get(name, MISSING)
        if _bracket(value) not in ORDERED or (
            current is not MISSING and _bracket(current) != _bracket(value)
        ):
            raise UnsupportedWrite(f"{pick} of {path} ({current!r}) with {value!r}")
        beyond = current is MISSING or (value > current if pick == "$max" else value < current)
        if beyond:
            holder[name] = copy.deepcopy(value)

    return apply


def _push(document: Document, path: str, value: Any) -> None:
    holder, name = _parent(document, path, create=True)
    assert holder is not None
    current = holder.get(name, MISSING)
    if current is not MISSING and not isinstance(current, list):
        raise UnsupportedWrite(f"$push to {path}, a {_bracket(current)}")
    items = [value]
    if isinstance(value, dict) and any(k.startswith("$") for k in value):
        if set(value) != {"$each"} or not isinstance(value["$each"], list):
            raise UnsupportedWrite(f"$push modifiers {sorted(value)}")
        items = value["$each"]
    holder[name] = [*([] if current is MISSING else current), *copy.deepcopy(items)]


OPERATORS: dict[str, Callable[[Document, str, Any], None]] = {
    "$set": _set,
    "$setOnInsert": _set,
    "$unset": _unset,
    "$inc": _inc,
    "$max": _bound("$max"),
    "$min": _bound("$min"),
    "$push": _push,
}
