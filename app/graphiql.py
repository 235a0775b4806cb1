"""GraphiQL served by this server: the page, and its assets vendored under
``app/static/graphiql`` (refreshed by ``refresh.py`` there), so it works without internet.

Every asset carries its subresource integrity: the vendored files' from
``manifest.json`` (written when they were fetched from npm, and checked against the
files by the tests), ours hashed at start. Asset URLs carry a digest, so browsers may
cache them for good and an upgrade is never answered from a stale cache (whose bytes
would fail the new integrity). The page's Content-Security-Policy lets it load from and
talk to this server only.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import json
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

ASSETS = Path(__file__).resolve().parent / "static" / "graphiql"
PREFIX = "/graphiql/"
OWN = ("shop-graphiql.css", "shop-graphiql.js")
STYLES = ("graphiql.min.css", "plugin-explorer.css", "shop-graphiql.css")
SCRIPTS = (
    "react.production.min.js",
    "react-dom.production.min.js",
    "graphiql.min.js",
    "plugin-explorer.umd.js",
    "shop-graphiql.js",
)
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        # GraphiQL and CodeMirror set style attributes from script.
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        # 'self' covers ws:// and wss:// to this host and port (CSP level 3).
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)


def integrity_of(path: Path) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(path.read_bytes()).digest()).decode()


@dataclass(frozen=True)
class Assets:
    integrity: dict[str, str]
    """Each served file's ``sha384-…`` integrity."""
    versions: dict[str, str]
    """The vendored npm packages' versions."""

    def url(self, name: str) -> str:
        digest = self.integrity[name].removeprefix("sha384-")[:16]
        return f"{PREFIX}{name}?v={digest.replace('+', '-').replace('/', '_')}"


@functools.cache
def assets() -> Assets:
    manifest = json.loads((ASSETS / "manifest.json").read_text())
    integrity = {**manifest["files"], **{name: integrity_of(ASSETS / name) for name in OWN}}
    return Assets(integrity, manifest["packages"])


@functools.cache
def page() -> str:
    served = assets()

    def tag(name: str) -> str:
        url, integrity = html.escape(served.url(name)), served.integrity[name]
        if name.endswith(".css"):
            return f'<link rel="stylesheet" href="{url}" integrity="{integrity}" />'
        return f'<script src="{url}" integrity="{integrity}"></script>'

    styles = "\n    ".join(tag(name) for name in STYLES)
    scripts = "\n    ".join(tag(name) for name in SCRIPTS)
    version = html.escape(served.versions["graphiql"])
    return f"""<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8" />
    <meta name="viewport" content="width=device-width, initial-scale=1" />
    <meta name="robots" content="noindex" />
    <link rel="icon" href="data:," />
    <title>Shop API · GraphiQL {version}</title>
    {styles}
  </head>
  <body>
    <div id="graphiql">Loading GraphiQL…</div>
    {scripts}
  </body>
</html>
"""


def render() -> Response:
    return HTMLResponse(page(), headers={"content-security-policy": CONTENT_SECURITY_POLICY})


async def asset(request: Request) -> Response:
    """A file of the page, or a license; nothing else of the folder is served."""
    name = request.path_params["name"]
    if name.startswith("licenses/") and (ASSETS / name).parent == ASSETS / "licenses":
        path = ASSETS / name
        if path.is_file():
            return FileResponse(path, media_type="text/plain; charset=utf-8")
    if name not in assets().integrity:
        return PlainTextResponse("Not Found", status_code=404)
    return FileResponse(
        ASSETS / name, headers={"cache-control": "public, max-age=31536000, immutable"}
    )


routes = [Route(PREFIX + "{name:path}", asset)]
