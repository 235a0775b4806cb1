"""Expected GraphQL answers stay out of the error log; server faults do not."""

from __future__ import annotations

import logging

import pytest
from graphql import GraphQLError

from domain.errors import CommitOutcomeUnknown
from domain.identity import ANONYMOUS, Principal
from schema.build import build_schema


def test_only_server_faults_are_logged_as_errors_and_masked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    expected = GraphQLError(
        "not yet", extensions={"code": "NOT_YET_CONSISTENT"}, original_error=Exception("x")
    )
    invalid_document = GraphQLError("Cannot query field 'nope'")
    fault = GraphQLError(
        "boom: mongodb://10.0.0.7 refused", path=["product"], original_error=RuntimeError("boom")
    )
    with caplog.at_level(logging.DEBUG):
        build_schema().process_errors([expected, invalid_document, fault])
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "boom" in errors[0].getMessage()
    assert errors[0].exc_info is not None
    assert any("NOT_YET_CONSISTENT" in r.getMessage() for r in caplog.records)
    # The client sees no internals, only an id that finds the log line.
    assert "10.0.0.7" not in fault.message
    assert fault.extensions is not None
    assert fault.extensions["code"] == "INTERNAL_SERVER_ERROR"
    request_id = fault.extensions["requestId"]
    assert request_id in fault.message
    assert request_id in errors[0].getMessage()
    assert expected.message == "not yet"


async def test_a_commit_of_unknown_outcome_answers_a_retryable_coded_error() -> None:
    """The store failed while committing and could not tell whether it did."""

    class Bus:
        async def execute(self, *args: object, **kwargs: object) -> object:
            raise CommitOutcomeUnknown("the commit failed; retry with the same idempotencyKey")

    class Context:
        bus = Bus()
        principal = Principal("admin", frozenset({"admin"}))

    result = await build_schema().execute(
        'mutation { restockProduct(id: "p", quantity: 1, idempotencyKey: "k") { success } }',
        context_value=Context(),
    )
    assert result.errors is not None
    [error] = result.errors
    assert error.extensions == {"code": "COMMIT_OUTCOME_UNKNOWN", "retryable": True}
    assert "same idempotencyKey" in error.message


async def test_a_failing_resolver_answers_a_masked_error_whose_id_is_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        def __getitem__(self, name: str) -> object:
            raise ConnectionError("mongodb://10.0.0.7:27017: connection refused")

    class Context:
        db = Broken()
        principal = ANONYMOUS
        header_error = None
        header_min_version = None

    with caplog.at_level(logging.ERROR):
        result = await build_schema().execute(
            '{ product(id: "0b7d3c55-6a4f-4a59-9a43-1f7f2c3c9e01") { id } }',
            context_value=Context(),
        )
    assert result.errors is not None
    [error] = result.errors
    assert error.extensions is not None
    assert error.extensions["code"] == "INTERNAL_SERVER_ERROR"
    assert "10.0.0.7" not in error.message
    assert "mongodb" not in str(error.formatted)
    [logged] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.extensions["requestId"] in logged.getMessage()
    assert logged.exc_info is not None
    assert isinstance(logged.exc_info[1], ConnectionError)


async def test_a_fault_in_a_subscriptions_stream_is_masked_and_logged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Strawberry reports it without a path; it is still a fault."""
    import time

    import projections.audit as audit
    from projections.progress import Progress

    async def failing(*_: object, **__: object) -> object:
        raise RuntimeError("mongodb://shop:hunter2@10.0.0.5:27017 refused")

    monkeypatch.setattr(audit, "events_between", failing)
    progress = Progress()
    progress.advance("audit_trail", 5)

    class Context:
        principal = Principal("admin", frozenset({"admin"}), time.time() + 600)
        db = None
        recent = None

    Context.progress = progress  # type: ignore[attr-defined]
    with caplog.at_level(logging.ERROR):
        stream = await build_schema().subscribe(
            "subscription { events { type } }", context_value=Context()
        )
        result = await anext(stream)  # type: ignore[arg-type]
    [error] = result.errors
    assert error.extensions is not None
    assert error.extensions["code"] == "INTERNAL_SERVER_ERROR"
    assert "hunter2" not in str(error.formatted)
    assert any("hunter2" in r.getMessage() or r.exc_info for r in caplog.records)


async def test_a_variable_its_type_refuses_is_explained_not_masked() -> None:
    class Context:
        principal = ANONYMOUS
        header_error = None
        header_min_version = None

    result = await build_schema().execute(
        "query($v: Version) { products(first: 1, minVersion: $v) { totalCount } }",
        variable_values={"v": -3},
        context_value=Context(),
    )
    assert result.errors is not None
    [error] = result.errors
    assert "$v" in error.message
    assert (error.extensions or {}).get("code") != "INTERNAL_SERVER_ERROR"
