"""GraphQL over HTTP: graphql-http's audit suite, and the status codes and media types
this server answers with (application/graphql-response+json and legacy application/json)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Server, admin_token, bearer, module_server
from tests.e2e.node import installed

GRAPHQL_RESPONSE = "application/graphql-response+json"
INVALID = "{ nosuchfield }"
UNPARSABLE = "{ product("
# Valid, and fails once executing: the resolver checks the X-Min-Version header it is
# sent with (EXECUTION_ERROR_HEADERS) and raises a field error.
FAILS_IN_EXECUTION = '{ order(id: "no-such-order") { id } }'
EXECUTION_ERROR_HEADERS = {"X-Min-Version": "soon"}


@pytest.fixture(scope="module")
def server(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module: no test here writes."""
    with module_server(tmp_path_factory, mongo_url, "graphql-over-http") as server:
        yield server


def test_every_audit_of_graphql_http_passes(server: Server) -> None:
    node = shutil.which("node")
    assert node is not None, "the end-to-end tests need Node.js"
    folder = installed("graphql_http")
    run = subprocess.run(
        [node, "audit.js", f"{server.url}/graphql", f"Bearer {admin_token()}"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    audits = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(audits) >= 61, run.stdout
    not_ok = [f"{a['id']} {a['status']}: {a['name']} ({a['reason']})" for a in audits
              if a["status"] != "ok"]  # fmt: skip
    assert not_ok == [], "\n".join(not_ok)


async def post(
    server: Server,
    query: str,
    accept: str | None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    headers = {**bearer(admin_token()), **(headers or {})}
    if accept is not None:
        headers["accept"] = accept
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        return await http.post("/graphql", json={"query": query, **extra}, headers=headers)


def media_type(response: httpx.Response) -> str:
    return response.headers["content-type"].split(";")[0].strip()


@pytest.mark.parametrize("query", [UNPARSABLE, INVALID])
async def test_a_request_error_is_400_without_data_for_graphql_response_json(
    server: Server, query: str
) -> None:
    answer = await post(server, query, GRAPHQL_RESPONSE)
    assert answer.status_code == 400, answer.text
    assert media_type(answer) == GRAPHQL_RESPONSE
    body = answer.json()
    assert "data" not in body, body
    assert body["errors"], body


@pytest.mark.parametrize("query", [UNPARSABLE, INVALID])
async def test_legacy_json_clients_still_get_200_with_the_errors(
    server: Server, query: str
) -> None:
    for accept in (None, "application/json", "*/*"):
        answer = await post(server, query, accept)
        assert answer.status_code == 200, (accept, answer.text)
        assert media_type(answer) == "application/json", accept
        assert answer.json()["errors"], answer.text


async def test_bad_variables_and_refused_limits_are_request_errors(server: Server) -> None:
    coercion = await post(
        server,
        "query($n: Int!) { products(first: $n) { totalCount } }",
        GRAPHQL_RESPONSE,
        variables={"n": "many"},
    )
    assert coercion.status_code == 400, coercion.text
    assert "data" not in coercion.json()
    aliased = "{ " + " ".join(f"a{n}: __typename" for n in range(100)) + " }"
    refused = await post(server, aliased, GRAPHQL_RESPONSE)
    assert refused.status_code == 400, refused.text
    codes = [e["extensions"]["code"] for e in refused.json()["errors"]]
    assert codes == ["LIMIT_EXCEEDED"], refused.text


async def test_an_error_once_executing_is_200_with_data(server: Server) -> None:
    answer = await post(server, FAILS_IN_EXECUTION, GRAPHQL_RESPONSE, EXECUTION_ERROR_HEADERS)
    assert answer.status_code == 200, answer.text
    assert media_type(answer) == GRAPHQL_RESPONSE
    body = answer.json()
    assert body["data"] == {"order": None}, body
    [error] = body["errors"]
    assert error["path"] == ["order"], body
    assert error["extensions"]["code"] == "BAD_USER_INPUT", body


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (f"application/json, {GRAPHQL_RESPONSE}", "application/json"),
        (f"{GRAPHQL_RESPONSE}, application/json", GRAPHQL_RESPONSE),
        (f"application/json;q=0.5, {GRAPHQL_RESPONSE}", GRAPHQL_RESPONSE),
        (f"{GRAPHQL_RESPONSE};q=0.1, application/json;q=0.9", "application/json"),
        ("text/html", "application/json"),
    ],
)
async def test_the_media_type_follows_the_accept_header(
    server: Server, accept: str, expected: str
) -> None:
    answer = await post(server, "{ __typename }", accept)
    assert answer.status_code == 200
    assert media_type(answer) == expected
    assert answer.json() == {"data": {"__typename": "Query"}}


async def test_get_runs_queries_only(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        query = await http.get(
            "/graphql",
            params={"query": "{ __typename }"},
            headers={**bearer(admin_token()), "accept": GRAPHQL_RESPONSE},
        )
        assert query.status_code == 200, query.text
        assert query.json() == {"data": {"__typename": "Query"}}
        mutation = await http.get(
            "/graphql",
            params={"query": 'mutation { cancelOrder(id: "x", reason: "r") { success } }'},
            headers={**bearer(admin_token()), "accept": GRAPHQL_RESPONSE},
        )
        assert mutation.status_code == 405, mutation.text
        assert mutation.headers["allow"] == "GET, POST"
        assert mutation.json()["errors"][0]["message"], mutation.text
        put = await http.put("/graphql", headers=bearer(admin_token()))
        assert put.status_code == 405
        assert media_type(put) == "application/json"


async def test_a_subscription_over_http_is_refused_with_where_to_go(server: Server) -> None:
    query = 'subscription { productUpdated(id: "x") { id } }'
    for accept in (GRAPHQL_RESPONSE, "application/json"):
        answer = await post(server, query, accept)
        assert answer.status_code == 400, answer.text
        assert "WebSocket" in answer.json()["errors"][0]["message"]


async def test_an_operation_name_that_is_no_string_is_a_request_error(server: Server) -> None:
    for name in ({"a": 1}, ["A"], 7):
        answer = await post(server, "query A { __typename }", GRAPHQL_RESPONSE, operationName=name)
        assert answer.status_code == 400, (name, answer.text)
