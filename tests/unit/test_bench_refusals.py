"""P9's own tools: the alternating runner, how answers are read, and that each probe is
refused by the limit it is named for."""

from __future__ import annotations

import json
import random
from itertools import pairwise

import pytest

from app.settings import Settings
from bench.harness import alternating
from bench.measures import answer_of, graphql_body, refusal_probes
from schema.build import build_schema
from schema.limits import DocumentCache, LimitExceeded, Limits, check, count_tokens

DEFAULT_BODY_LIMIT: int = Settings.model_fields["shop_max_body_bytes"].default


class FakeClock:
    """Time that only the fake calls advance (a second each), so rounds are exact."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_every_call_runs_once_a_round_in_a_new_order_after_the_warmup() -> None:
    clock = FakeClock()
    order: list[str] = []

    def call(name: str) -> object:
        async def run(_: int) -> None:
            order.append(name)
            clock.now += 1.0

        return run

    names = ["a", "b", "c", "d"]
    # Rounds take 4 s: the warm-up (6 s) covers the rounds starting at 0 and 4; rounds
    # then go on while they start before 6 + 10 = 16 s: at 8 and 12.
    latencies = await alternating(
        {n: call(n) for n in names}, seconds=10, warmup=6, min_rounds=1,
        rng=random.Random(1), clock=clock,
    )  # fmt: skip
    rounds = [order[i : i + 4] for i in range(0, len(order), 4)]
    assert len(rounds) == 4
    assert all(sorted(r) == names for r in rounds)
    assert any(a != b for a, b in pairwise(rounds))  # shuffled anew
    assert latencies == {n: [1.0, 1.0] for n in names}


async def test_at_least_min_rounds_are_measured() -> None:
    clock = FakeClock()

    async def call(_: int) -> None:
        clock.now += 1.0

    latencies = await alternating({"x": call, "y": call}, 0, warmup=0, min_rounds=7, clock=clock)
    assert latencies == {"x": [1.0] * 7, "y": [1.0] * 7}


def test_answers_read_as_status_code_and_limit() -> None:
    def limit(code: str, setting: str | None = None) -> dict[str, object]:
        extensions = {"code": code} | ({"limit": setting} if setting else {})
        return {"errors": [{"message": "m", "extensions": extensions}]}

    assert answer_of(413, limit("LIMIT_EXCEEDED", "SHOP_MAX_BODY_BYTES")) == (
        "413 LIMIT_EXCEEDED SHOP_MAX_BODY_BYTES"
    )
    assert answer_of(200, limit("UNAUTHENTICATED")) == "200 UNAUTHENTICATED"
    assert answer_of(200, {"errors": [{"message": "Syntax Error"}]}) == "200 ERROR"
    refused = {"success": False, "errors": [{"code": "UNAUTHENTICATED"}]}
    refused_command = {"data": {"restockProduct": refused}}
    assert answer_of(200, refused_command) == "200 UNAUTHENTICATED"
    done = {"data": {"restockProduct": {"success": True, "errors": []}}}
    assert answer_of(200, done) == "200 answered"
    assert answer_of(200, {"data": {"__typename": "Query"}}) == "200 answered"
    assert answer_of(502, "Bad Gateway") == "502 unreadable"


def test_varied_bodies_are_new_texts_of_the_same_tokens() -> None:
    body = graphql_body("{ dashboard { version } }")
    first, second = (json.loads(body(n))["query"] for n in (0, 1))
    assert first != second
    assert count_tokens(first, 100) == count_tokens(second, 100) == 7  # the comment too
    same = graphql_body("{ __typename }", vary=False)
    assert same(0) == same(1) == b'{"query": "{ __typename }"}'


PROBES = {probe.id: probe for probe in refusal_probes()}


def test_only_the_body_probe_is_over_the_default_body_limit() -> None:
    over = [p.id for p in PROBES.values() if len(p.body(0)) > DEFAULT_BODY_LIMIT]
    assert over == ["body"]
    assert PROBES["body"].expected == "413 LIMIT_EXCEEDED SHOP_MAX_BODY_BYTES"
    assert next(iter(PROBES)) == "typename"  # the baseline the rows divide by


@pytest.mark.parametrize(
    "probe", [p for p in PROBES if PROBES[p].expected.startswith("200 LIMIT_EXCEEDED")]
)
def test_each_document_probe_is_refused_by_the_limit_it_names(probe: str) -> None:
    limits, schema = Limits(), build_schema()._schema
    query = json.loads(PROBES[probe].body(0))["query"]

    def parse_and_check() -> None:
        document = DocumentCache(limits.document_cache_bytes).parse(query, limits)
        check(schema, document, None, None, limits)

    with pytest.raises(LimitExceeded) as refused:
        parse_and_check()
    assert refused.value.extensions is not None
    assert PROBES[probe].expected == f"200 LIMIT_EXCEEDED {refused.value.extensions['limit']}"
