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

A refusal can be stored with an idempotency key (:meth:`DomainError.to_data`) and
raised again from it (:meth:`DomainError.from_data`) with the same codes, messages
and fields.

:class:`CommitOutcomeUnknown` is no refusal: the store failed while committing and
could not say whether the command took effect.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

from sqlalchemy.exc import DBAPIError


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

    def to_data(self) -> list[dict[str, str | None]]:
        """Each problem as ``{"code", "message", "field"}``, JSON-ready."""
        return [{"code": p.code, "message": p.message, "field": p.field} for p in self.problems]

    @staticmethod
    def from_data(data: Sequence[Mapping[str, str | None]]) -> DomainError:
        """The refusal :meth:`to_data` described: one error, or :class:`Rejected` for several."""
        errors = [_BY_CODE[str(p["code"])](str(p["message"]), p["field"]) for p in data]
        return errors[0] if len(errors) == 1 else Rejected(errors)


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


_BY_CODE: dict[str, type[DomainError]] = {
    cls.code: cls
    for cls in (
        ValidationFailed,
        NotFound,
        Duplicate,
        VersionConflict,
        InsufficientStock,
        InvalidState,
        IdempotencyKeyReused,
    )
}


class CommitOutcomeUnknown(Exception):
    """The store failed while committing, and whether the command took effect is unknown.

    Retrying with the same idempotency key is safe: it answers the first result if
    the command did take effect, and runs it if not.
    """


class StoreUnavailable(Exception):
    """The write store could not be reached: the command took no effect (it never got as
    far as a COMMIT), and may be sent again once the store is back."""


def unreachable(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) says the store could not be reached, or
    the connection to it was lost, rather than that a statement failed."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, OSError | TimeoutError):
            return True
        if type(seen).__module__.startswith("asyncpg") and type(seen).__name__ in _ASYNCPG_LOST:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


_ASYNCPG_LOST = frozenset(
    {"ConnectionDoesNotExistError", "CannotConnectNowError", "ConnectionFailureError"}
)


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
