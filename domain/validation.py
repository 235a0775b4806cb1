"""Small input checks shared by the aggregates. Each returns the problem or ``None``."""

from __future__ import annotations

import re

from domain.errors import ValidationFailed


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
