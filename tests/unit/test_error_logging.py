"""Expected GraphQL answers stay out of the error log; server faults do not."""

from __future__ import annotations

import logging

import pytest
from graphql import GraphQLError

from schema.build import build_schema


def test_only_server_faults_are_logged_as_errors(caplog: pytest.LogCaptureFixture) -> None:
    expected = GraphQLError(
        "not yet", extensions={"code": "NOT_YET_CONSISTENT"}, original_error=Exception("x")
    )
    invalid_document = GraphQLError("Cannot query field 'nope'")
    fault = GraphQLError("boom", original_error=RuntimeError("boom"))
    with caplog.at_level(logging.DEBUG):
        build_schema().process_errors([expected, invalid_document, fault])
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == ["boom"]
    assert any("NOT_YET_CONSISTENT" in r.getMessage() for r in caplog.records)
