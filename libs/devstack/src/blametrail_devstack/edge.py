"""``python -m blametrail_devstack.edge``: one public host for ``make up``, as the Ingress is in
Kubernetes (``deploy/k8s/base/ingress.yaml``). Sentry appends UI-component paths to the host of
the webhook URL, so ``/webhooks/sentry…`` goes to ingest, ``/sentry/…``, ``/integrations/sentry/…``, ``/api/…``
to the mappings-api, and every other path (``/``, the pages) to the web. Development only: a plain
forwarding proxy, bodies and headers passed through unchanged except ``X-Forwarded-For``: the
edge is the first proxy, so whatever a client sent there is dropped and the edge's own peer is
sent instead (``X-Real-IP`` and ``Forwarded`` from the client are dropped too).
"""

from __future__ import annotations

import os

import httpx
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

__all__ = ["Edge", "forward_headers", "main", "upstream_for"]

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length"}


API_PREFIXES = ("/api/", "/sentry/", "/integrations/", "/openapi.json", "/docs")


def upstream_for(path: str, ingest: str, api: str, web: str | None = None) -> str:
    """Pure: which service serves ``path``: webhooks to ingest, the API's paths to the API, and
    (when the web runs) every other path, the pages, to the web."""
    if path.startswith("/webhooks/sentry"):
        return ingest
    if web is None or path.startswith(API_PREFIXES):
        return api
    return web


_CLIENT_SAYS = {"x-forwarded-for", "x-real-ip", "forwarded"}


def forward_headers(headers: list[tuple[str, str]], peer: str | None) -> list[tuple[str, str]]:
    """Pure: the headers sent upstream: hop-by-hop ones and whatever the client claimed about
    its address dropped, ``X-Forwarded-For`` the peer the edge was called from."""
    kept = [(k, v) for k, v in headers if k.lower() not in _HOP and k.lower() not in _CLIENT_SAYS]
    return [*kept, ("x-forwarded-for", peer)] if peer else kept


class Edge:
    def __init__(self, ingest: str, api: str, web: str | None = None) -> None:
        self.ingest, self.api, self.web = ingest, api, web
        self.client = httpx.AsyncClient(timeout=10)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        if request.url.path in ("/healthz", "/readyz"):
            await JSONResponse({"status": "ok"})(scope, receive, send)
            return
        base = upstream_for(request.url.path, self.ingest, self.api, self.web)
        url = base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        peer = request.client.host if request.client else None
        headers = forward_headers(request.headers.items(), peer)
        try:
            upstream = await self.client.request(
                request.method, url, headers=headers, content=await request.body()
            )
        except httpx.HTTPError as exc:
            response: Response = JSONResponse(
                {"error": "upstream", "message": f"{base} did not answer: {type(exc).__name__}"},
                502,
            )
        else:
            response = Response(
                upstream.content,
                upstream.status_code,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in _HOP},
            )
        await response(scope, receive, send)


def main() -> None:
    edge = Edge(
        os.environ.get("BLAMETRAIL_INGEST_URL", "http://127.0.0.1:8081"),
        os.environ.get("BLAMETRAIL_API_URL", "http://127.0.0.1:8082"),
        os.environ.get("BLAMETRAIL_WEB_URL", "http://127.0.0.1:8087"),
    )
    port = int(os.environ.get("BLAMETRAIL_EDGE_PORT", "8080"))
    uvicorn.run(  # the peer is the client: no proxy stands in front of the edge
        edge,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()
