"""The web's ASGI app: the pages (one module each under :mod:`.pages`), static files, health.
``/readyz`` is ready while the REST API answers its own ``/healthz``."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from blametrail_common.health import health_routes
from prometheus_client import Histogram
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from blametrail_web.pages import auth, ignored, incidents, integrations, mappings, people, services
from blametrail_web.settings import WebSettings
from blametrail_web.web import Ctx, Web

__all__ = ["PAGE_SECONDS", "create_app", "page_routes"]

STATIC = Path(__file__).parent / "static"
PAGE_SECONDS = Histogram(
    "blametrail_web_request_seconds", "Time to answer a page request", ["method", "status"]
)

# Headers on every answer: no framing (clickjacking), no sniffing, no referrer to Sentry links,
# and a policy that allows only our own script and styles (no inline script anywhere).
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        b" frame-ancestors 'none'; form-action 'self' https: http:",
    ),
]


class Headers:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *SECURITY_HEADERS]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            if not scope["path"].startswith(("/static", "/metrics", "/healthz", "/readyz")):
                PAGE_SECONDS.labels(scope["method"], str(status)).observe(
                    time.perf_counter() - began
                )


def page_routes() -> list[BaseRoute]:
    return [
        *auth.routes(),
        *incidents.routes(),
        *integrations.routes(),
        *mappings.routes(),
        *ignored.routes(),
        *services.routes(),
        *people.routes(),
    ]


def create_app(settings: WebSettings, key: bytes, http: httpx.AsyncClient) -> Starlette:
    web = Web.build(settings, key, http)

    async def api_answers() -> bool:
        resp = await http.get("/healthz")
        return resp.status_code == 200

    async def not_found(request: Request, _: Exception) -> Response:
        return Ctx(web, request).render(
            "error.html", 404, title="Not found", message="There is no page at this address."
        )

    async def crashed(request: Request, _: Exception) -> Response:
        return Ctx(web, request).render(
            "error.html",
            500,
            title="Something went wrong",
            message="The page could not be shown. Try again; if it keeps failing, tell us.",
        )

    app = Starlette(
        routes=[
            *health_routes({"api": api_answers}),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
            *page_routes(),
        ],
        exception_handlers={404: not_found, 500: crashed},
        middleware=[],
    )
    app.state.web = web
    return Headers(app)  # type: ignore[return-value]
