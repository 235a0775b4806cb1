"""The one place where domain refusals become the contract's UserErrors, and which
exceptions refuse a request rather than fail it."""

from __future__ import annotations

from strawberry.exceptions import MissingQueryError
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError

from domain.errors import DomainError
from schema.types import ErrorCode, UserError

# Strawberry's refusals of a request: no query, no such operation, an operation type the
# method does not allow (answered 400 or 405 over HTTP; never a server fault).
REQUEST_REFUSALS = (MissingQueryError, CannotGetOperationTypeError, InvalidOperationTypeError)


def user_errors(error: DomainError) -> list[UserError]:
    return [
        UserError(code=ErrorCode(problem.code), message=problem.message, field=problem.field)
        for problem in error.problems
    ]
