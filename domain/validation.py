"""Small input checks shared by the aggregates. Each returns the problem or ``None``."""

from __future__ import annotations

import dataclasses
import functools
import re

from domain.errors import ValidationFailed

# Ids are UUIDs this server made; a longer one names nothing and is not looked up.
MAX_ID_LENGTH = 64
# A command field's metadata key naming it in the input when its camelCase name is
# not that name (an aggregate's id given as the mutation's ``id`` argument).
INPUT_NAME = "input_name"


def text_length(value: str, field: str, minimum: int, maximum: int) -> ValidationFailed | None:
    """Checks the length of ``value`` after surrounding whitespace is stripped."""
    length = len(value.strip())
    if length < minimum:
        return ValidationFailed(f"{field} must not be empty", field)
    if length > maximum:
        return ValidationFailed(f"{field} must be at most {maximum} characters", field)
    return None


def max_length(value: str, field: str, maximum: int) -> ValidationFailed | None:
    if len(value) > maximum:
        return ValidationFailed(f"{field} must be at most {maximum} characters", field)
    return None


def int_range(value: int, field: str, minimum: int, maximum: int) -> ValidationFailed | None:
    if not minimum <= value <= maximum:
        return ValidationFailed(f"{field} must be between {minimum:,} and {maximum:,}", field)
    return None


def pattern(value: str, field: str, regex: re.Pattern[str], rule: str) -> ValidationFailed | None:
    if regex.fullmatch(value) is None:
        return ValidationFailed(f"{field} must be {rule}", field)
    return None


def invalid_text(value: object, path: str = "") -> list[ValidationFailed]:
    """A problem for each string in ``value`` that neither store could keep, and for
    each id (a field named ``id`` or ``…_id``) longer than :data:`MAX_ID_LENGTH`.

    ``value`` is a command (a frozen dataclass), walked through nested dataclasses and
    tuples; each problem's ``field`` is the input path (``address.postalCode``,
    ``lines.1.productId``). PostgreSQL refuses U+0000 in text, and a lone surrogate
    cannot be encoded as UTF-8 at all; SQLite would keep the first and fail on the
    second, so both are refused alike, before anything is read or written.
    """
    problems: list[ValidationFailed] = []
    _walk(value, path, problems)
    return problems


def text_problem(value: str, field: str) -> ValidationFailed | None:
    if "\x00" in value or not _encodable(value):
        return ValidationFailed(
            f"{field} must be valid text: no NUL characters or unpaired surrogates", field
        )
    return None


def _encodable(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _walk(value: object, path: str, problems: list[ValidationFailed]) -> None:
    if isinstance(value, str):
        if (problem := text_problem(value, path)) is not None:
            problems.append(problem)
    elif isinstance(value, tuple | list):
        for i, item in enumerate(value):
            _walk(item, f"{path}.{i}" if path else str(i), problems)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for name, field in _input_fields(type(value)):
            item, where = getattr(value, name), f"{path}.{field}" if path else field
            is_id = (name == "id" or name.endswith("_id")) and isinstance(item, str)
            if is_id and (problem := max_length(item, where, MAX_ID_LENGTH)) is not None:
                problems.append(problem)
                continue
            _walk(item, where, problems)


@functools.cache
def _input_fields(cls: type) -> tuple[tuple[str, str], ...]:
    """Each field's attribute name and input name (``INPUT_NAME`` metadata, else camelCase)."""
    return tuple(
        (f.name, f.metadata.get(INPUT_NAME) or _camel(f.name)) for f in dataclasses.fields(cls)
    )


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(word.capitalize() for word in rest)
