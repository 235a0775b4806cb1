"""Documents generated from the served schema (hypothesis-graphql), sent over HTTP as an
admin to a real server: no 5xx, no internals in any answer.

Valid documents (queries and mutations with arbitrary arguments) and invalid ones
(wrong argument types, missing arguments). Bounded: ``FUZZ_EXAMPLES`` per kind.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Any

import httpx
import pytest
from graphql import IntValueNode, StringValueNode, build_schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import Mode, from_schema, mutations, queries

from tests.e2e.conftest import ROOT, Server, admin_token, bearer

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
SCHEMA = build_schema((ROOT / "schema.graphql").read_text())

# What an answer must never show: stack traces, library and driver names, store URLs.
INTERNALS = re.compile(
    r"Traceback|File \"|\.py\b|pymongo|motor|sqlalchemy|sqlite|asyncpg|psycopg|ferretdb"
    r"|mongodb://|postgresql|Errno|0x[0-9a-f]{6,}",
    re.IGNORECASE,
)

# Versions are never negative: generating them so lets documents get past the scalar.
VERSIONS = st.integers(min_value=0, max_value=2**63 - 1)
SCALARS = {
    "Version": VERSIONS.map(lambda v: IntValueNode(value=str(v))),
    "BigInt": st.integers(-(2**63), 2**63 - 1).map(lambda v: IntValueNode(value=str(v))),
    "DateTime": st.datetimes().map(lambda d: StringValueNode(value=d.isoformat())),
    "JSON": st.text(max_size=20).map(lambda t: StringValueNode(value=t)),
}


@pytest.fixture
def fuzz_server(start_server: Any) -> Server:
    # A minVersion far ahead would wait the whole consistency timeout: keep it short.
    server: Server = start_server(SHOP_CONSISTENCY_TIMEOUT="0.05")
    return server


def _check(http: httpx.Client, document: str, seen: Counter[str]) -> None:
    response = http.post("/graphql", json={"query": document})
    assert response.status_code < 500, (document, response.status_code, response.text[:2000])
    body = response.json()
    assert "data" in body or "errors" in body, body
    # Mutations answer refusals in data (UserError messages): the whole answer is checked.
    assert not INTERNALS.search(response.text), (document, response.text[:2000])
    for error in body.get("errors") or []:
        code = (error.get("extensions") or {}).get("code", "INVALID_DOCUMENT")
        seen[code] += 1
        assert code != "INTERNAL_SERVER_ERROR", (document, error)
    seen[f"HTTP {response.status_code}"] += 1


def _fuzz(server: Server, strategy: st.SearchStrategy[Any], label: str) -> None:
    seen: Counter[str] = Counter()
    headers = bearer(admin_token())
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            database=None,
        )
        @given(document=strategy)
        def run(document: str) -> None:
            _check(http, document, seen)

        run()
    sent = sum(v for k, v in seen.items() if k.startswith("HTTP"))
    print(f"\n{label}: {sent} documents, answers by code: {dict(seen)}")
    assert sent >= EXAMPLES


def test_generated_queries_answer_without_faults_or_internals(fuzz_server: Server) -> None:
    _fuzz(fuzz_server, queries(SCHEMA, custom_scalars=SCALARS), "queries")


def test_generated_mutations_answer_without_faults_or_internals(fuzz_server: Server) -> None:
    _fuzz(fuzz_server, mutations(SCHEMA, custom_scalars=SCALARS), "mutations")


def test_invalid_generated_documents_are_refused_cleanly(fuzz_server: Server) -> None:
    strategy = from_schema(SCHEMA, custom_scalars=SCALARS, mode=Mode.NEGATIVE)
    _fuzz(fuzz_server, strategy, "invalid documents")
