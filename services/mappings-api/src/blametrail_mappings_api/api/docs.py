"""``/docs``: the OpenAPI document as one self-contained HTML page (every route, every schema; no
script or stylesheet fetched from elsewhere, so it renders offline and behind a strict CSP)."""

from __future__ import annotations

import html
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

__all__ = ["docs_page", "docs_route"]


def docs_page(doc: dict[str, Any]) -> str:
    title = html.escape(doc["info"]["title"])
    rows = "".join(
        f"<tr><td><code>{m.upper()}</code></td><td><code>{html.escape(p)}</code></td>"
        f"<td>{html.escape(op.get('summary', ''))}</td></tr>"
        for p, ops in doc["paths"].items()
        for m, op in ops.items()
    )
    schemas = "".join(
        f"<h3>{html.escape(n)}</h3><pre>{html.escape(orjson.dumps(s, option=orjson.OPT_INDENT_2).decode())}</pre>"
        for n, s in doc.get("components", {}).get("schemas", {}).items()
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:.2em .8em}pre{background:#f4f4f4;padding:1em}</style>"
        f"</head><body><h1>{title}</h1><p>Authenticate with <code>Authorization: Bearer &lt;key&gt;</code>"
        f" (<code>blametrail apikey create --org SLUG</code>). Machine-readable: <a href='/openapi.json'>/openapi.json</a>.</p>"
        f"<table>{rows}</table><h2>Schemas</h2>{schemas}</body></html>"
    )


def docs_route() -> Route:
    """``GET /docs`` of the app it is mounted in (built once, on the first request)."""
    page: list[str] = []

    async def docs(request: Request) -> Response:
        if not page:
            page.append(docs_page(request.app.openapi()))
        return HTMLResponse(page[0])

    return Route("/docs", docs, methods=["GET"], include_in_schema=False)
