"""GraphiQL as a person uses it: served from this server alone (no request leaves the
machine), its assets checked by integrity, a query and a live subscription run through
the UI in headless Chromium with a bearer token typed into the Headers editor."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from app import graphiql
from tests.e2e.browser import Page, browser_page
from tests.e2e.conftest import Client, Server, admin_token

CREATE = """mutation($input: CreateProductInput!) {
  createProduct(input: $input) { success id version errors { code message } } }"""
RESTOCK = """mutation($id: ID!) { restockProduct(id: $id, quantity: 5) { success version } }"""


def test_the_vendored_assets_are_the_ones_their_manifest_names() -> None:
    """The integrity the page sends is that of the files served (a refresh that forgot
    the manifest, or an edited file, would leave GraphiQL blank in browsers)."""
    manifest = json.loads((graphiql.ASSETS / "manifest.json").read_text())
    for name, integrity in manifest["files"].items():
        assert graphiql.integrity_of(graphiql.ASSETS / name) == integrity, name
    licenses = {p.name for p in (graphiql.ASSETS / "licenses").iterdir()}
    for package in manifest["packages"]:
        assert f"{package.replace('/', '__')}.txt" in licenses, package


@pytest.fixture
def server(start_server: Any) -> Server:
    server: Server = start_server()
    return server


async def test_assets_are_served_with_integrity_and_nothing_else_is(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        page = await http.get("/graphql", headers={"accept": "text/html"})
        assert page.status_code == 200
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert "https://" not in page.text
        for name, integrity in graphiql.assets().integrity.items():
            assert f'integrity="{integrity}"' in page.text, name
            served = await http.get(graphiql.assets().url(name))
            assert served.status_code == 200, name
            assert graphiql.integrity_of(graphiql.ASSETS / name) == integrity
            assert "immutable" in served.headers["cache-control"]
        assert (await http.get("/graphiql/licenses/graphiql.txt")).status_code == 200
        for hidden in ("refresh.py", "manifest.json", "licenses/../refresh.py", "nope.js"):
            assert (await http.get(f"/graphiql/{hidden}")).status_code == 404, hidden


QUERY_EDITOR = ".graphiql-query-editor .CodeMirror"
# The tools pane's open editor: Headers, as the page opens it.
HEADERS_EDITOR = ".graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror"


async def set_editor(page: Page, selector: str, text: str) -> None:
    """Replaces the text of a CodeMirror editor, once it is there."""
    editor = f"document.querySelector({json.dumps(selector)})"
    await page.wait_for(f"!!{editor}")
    await page.evaluate(f"{editor}.CodeMirror.setValue({json.dumps(text)})")


async def set_operation(page: Page, text: str, name: str) -> None:
    """Types operation ``name`` into the query editor; returns once GraphiQL took it in
    (it names the tab after it), so that Run sends it and not the one before."""
    await set_editor(page, QUERY_EDITOR, text)
    await page.wait_for(
        f"document.querySelector('.graphiql-tab-active')?.textContent.includes({name!r})"
    )


# The text of GraphiQL's response pane.
RESPONSE = "(document.querySelector('.graphiql-response .CodeMirror')?.CodeMirror.getValue() ?? '')"


async def run(page: Page) -> None:
    await page.evaluate("document.querySelector('.graphiql-execute-button').click()")


async def test_a_query_and_a_subscription_run_through_the_ui_offline(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        client = Client(http)
        product = {"sku": "UI-1", "name": "UI mug", "category": "mugs", "priceCents": 900}
        made = (await client.data(CREATE, {"input": {**product, "initialStock": 3}}))[
            "createProduct"
        ]
        assert made["success"], made

        async with browser_page() as page:
            await page.send("Page.navigate", url=f"{server.url}/graphql")
            # The Headers editor is open, ready for a token.
            headers = f"document.querySelector({json.dumps(HEADERS_EDITOR)})?.CodeMirror"
            assert "Authorization" in await page.wait_for(f"{headers}?.getValue()")
            await set_editor(
                page, HEADERS_EDITOR, json.dumps({"Authorization": f"Bearer {admin_token()}"})
            )
            query = f"document.querySelector({json.dumps(QUERY_EDITOR)}).CodeMirror"
            assert "query Products" in await page.evaluate(f"{query}.getValue()")
            await set_operation(
                page,
                f'query Check {{ product(id: "{made["id"]}", minVersion: {made["version"]}) '
                "{ sku stockOnHand } projections { name } }",
                "Check",
            )
            await run(page)
            answered = await page.wait_for(f"{RESPONSE}.includes('\"projections\"') && {RESPONSE}")
            answer = json.loads(answered)
            assert answer["data"]["product"] == {"sku": "UI-1", "stockOnHand": 3}, answer
            assert answer["data"]["projections"], answer  # the admin token was sent

            await set_operation(
                page,
                f'subscription Watch {{ productUpdated(id: "{made["id"]}") {{ stockOnHand }} }}',
                "Watch",
            )
            await run(page)
            await page.wait_for(f"{RESPONSE}.includes('\"stockOnHand\": 3')")
            restocked = (await client.data(RESTOCK, {"id": made["id"]}))["restockProduct"]
            assert restocked["success"]
            await page.wait_for(f"{RESPONSE}.includes('\"stockOnHand\": 8')")

            origin = urlsplit(server.url).netloc
            off_machine = [
                url
                for url in page.requests
                if urlsplit(url).scheme not in ("data", "blob", "about")
                and urlsplit(url).netloc != origin
            ]
            assert off_machine == [], off_machine
            assert any(url.startswith("ws://") for url in page.requests), page.requests
            assert page.errors == [], page.errors
