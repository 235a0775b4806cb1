"""Tracing end to end: a real server exports OTLP/HTTP to a collector stand-in that
decodes what arrives; one trace holds the request, the command, its transaction, the
relay applying its event and each projection that applied it."""

from __future__ import annotations

import gzip
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import eventually
from tests.e2e.conftest import Client, Server
from tests.e2e.test_products_api import CREATE, PRODUCT, mug


class Collector:
    """An OTLP/HTTP endpoint (protobuf) keeping every span it receives."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        for span in scope.spans:
                            collector.spans.append({
                                "name": span.name,
                                "trace": span.trace_id.hex(),
                                "id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "links": [link.trace_id.hex() for link in span.links],
                            })  # fmt: skip
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def in_trace(self, trace_id: str) -> dict[str, dict[str, Any]]:
        return {s["name"]: s for s in list(self.spans) if s["trace"] == trace_id}


@pytest.fixture
def collector() -> Iterator[Collector]:
    made = Collector()
    thread = threading.Thread(target=made.server.serve_forever, daemon=True)
    thread.start()
    yield made
    made.server.shutdown()
    made.server.server_close()


async def test_a_write_and_its_projections_show_up_in_one_trace(
    start_server: Any, collector: Collector, tmp_path: Path
) -> None:
    server: Server = start_server(
        SHOP_OTLP_ENDPOINT=collector.url, OTEL_BSP_SCHEDULE_DELAY="50", LOG_LEVEL="DEBUG"
    )
    trace_id = secrets.token_hex(16)
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        client = Client(http)
        created = await client.post(CREATE, {"input": mug()}, traceparent=traceparent)
        made = created["data"]["createProduct"]
        assert made["success"], created
        await client.data(PRODUCT, {"id": made["id"], "v": made["version"]})
        # Log lines inside a request carry its trace id (an invalid document logs at debug).
        other = secrets.token_hex(16)
        await client.post("{ nosuchfield }", traceparent=f"00-{other}-{secrets.token_hex(8)}-01")

    wanted = {"command CreateProduct", "transaction", "relay apply ProductCreated",
              "project products", "project dashboard"}  # fmt: skip

    async def arrived() -> dict[str, dict[str, Any]] | None:
        spans = collector.in_trace(trace_id)
        return spans if wanted <= set(spans) else None

    spans = await eventually(arrived, within=20, interval=0.1)
    command = spans["command CreateProduct"]
    assert spans["transaction"]["parent"] == command["id"]
    applied = spans["relay apply ProductCreated"]
    assert applied["parent"] == command["id"], "the event carried the command's context"
    assert spans["project products"]["parent"] == applied["id"]
    assert applied["links"], "linked to the relay's batch span"
    # The HTTP request's span is the command's ancestor, in the caller's trace.
    ids = {s["id"]: s for s in spans.values()}
    ancestors, parent = [], command["parent"]
    while parent in ids:
        ancestors.append(ids[parent]["name"])
        parent = ids[parent]["parent"]
    assert any(name.startswith("POST") for name in ancestors), ancestors
    logged = [line for line in server.log.read_text().splitlines() if other in line]
    assert any("GraphQL error" in line for line in logged), logged
