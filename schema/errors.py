"""The one place where domain refusals become the contract's UserErrors."""

from __future__ import annotations

from domain.errors import DomainError
from schema.types import ErrorCode, UserError


def user_errors(error: DomainError) -> list[UserError]:
    return [
        UserError(code=ErrorCode(problem.code), message=problem.message, field=problem.field)
        for problem in error.problems
    ]
