"""Why a command was refused.

Every refusal is a :class:`DomainError`; its ``code`` is one of the contract's
``ErrorCode`` values and ``field`` the input path it is about (``None`` for the
whole command). A command that fails several checks at once raises
:class:`Rejected`, which carries each problem, so the client sees them all in
one answer::

    DomainError
    ├── ValidationFailed        VALIDATION_FAILED
    ├── NotFound                NOT_FOUND
    ├── Duplicate               DUPLICATE
    ├── VersionConflict         VERSION_CONFLICT
    ├── InsufficientStock       INSUFFICIENT_STOCK
    ├── InvalidState            INVALID_STATE
    ├── IdempotencyKeyReused    IDEMPOTENCY_KEY_REUSED
    └── Rejected                several of the above together
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator


class DomainError(Exception):
    """A command was refused; nothing was written."""

    code = "VALIDATION_FAILED"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    @property
    def problems(self) -> tuple[DomainError, ...]:
        """Each single problem behind this refusal."""
        return (self,)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, field={self.field!r})"


class ValidationFailed(DomainError):
    code = "VALIDATION_FAILED"


class NotFound(DomainError):
    code = "NOT_FOUND"


class Duplicate(DomainError):
    code = "DUPLICATE"


class VersionConflict(DomainError):
    code = "VERSION_CONFLICT"


class InsufficientStock(DomainError):
    code = "INSUFFICIENT_STOCK"


class InvalidState(DomainError):
    code = "INVALID_STATE"


class IdempotencyKeyReused(DomainError):
    code = "IDEMPOTENCY_KEY_REUSED"


class Rejected(DomainError):
    """Several problems found together; raised by :class:`Problems`."""

    def __init__(self, problems: Iterable[DomainError]) -> None:
        self._problems = tuple(p for problem in problems for p in problem.problems)
        super().__init__("; ".join(p.message for p in self._problems))
        self.code = self._problems[0].code

    @property
    def problems(self) -> tuple[DomainError, ...]:
        return self._problems


class Problems:
    """Collects the problems of one command so they are reported together.

    >>> problems = Problems()
    >>> problems.add(ValidationFailed("name must not be empty", "name"))
    >>> problems.raise_if_any()
    Traceback (most recent call last):
    ...
    domain.errors.Rejected: name must not be empty
    """

    def __init__(self) -> None:
        self._items: list[DomainError] = []

    def add(self, error: DomainError | None) -> None:
        if error is not None:
            self._items.append(error)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __iter__(self) -> Iterator[DomainError]:
        return iter(self._items)

    def raise_if_any(self) -> None:
        if len(self._items) == 1:
            raise self._items[0]
        if self._items:
            raise Rejected(self._items)
