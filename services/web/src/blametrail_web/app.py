"""The web's ASGI app: the pages (one module each under :mod:`.pages`), static files, health.
``/readyz`` is ready while the REST API answers its own ``/healthz``."""

from __future__ import annotations

import time
from collections.abc import Callable
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

__all__ = ["PAGE_SECONDS", "create_app", "page_routes", "security_headers"]

STATIC = Path(__file__).parent / "static"
PAGE_SECONDS = Histogram(
    "blametrail_web_request_seconds", "Time to answer a page request", ["method", "status"]
)

SIGNIN_BODY_LIMIT = 8 * 1024
"""Bytes a sign-in form may hold (email, password, CSRF token, next): anyone may post it."""
FORM_BODY_LIMIT = 1024 * 1024
"""Bytes any other form may hold (the largest is a mapping or an integration's secrets)."""


def security_headers(form_origins: tuple[str, ...] = ()) -> list[tuple[bytes, bytes]]:
    """Headers on every answer: no framing (clickjacking), no sniffing, no referrer to Sentry
    links, and a policy that allows only our own script and styles (no inline script anywhere)
    and forms that post to us only, plus the origins "Connect with Sentry" redirects through."""
    form_action = " ".join(["'self'", *form_origins])
    return [
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
        (
            b"content-security-policy",
            b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
            b" frame-ancestors 'none'; form-action " + form_action.encode(),
        ),
    ]


NO_STORE = (b"cache-control", b"no-store")
UNCACHED = ("/static",)


class Headers:
    """Security headers on every answer, ``Cache-Control: no-store`` on every page (they show
    an organization's data, a new API key, CSRF tokens), a bounded form body (413 before it is
    parsed), and the page timings (the histogram, and ``Server-Timing: app;dur=`` in ms up to the
    answer's start, which for a page is after it is rendered)."""

    def __init__(
        self,
        app: ASGIApp,
        headers: list[tuple[bytes, bytes]],
        too_large: Callable[[Scope], Response],
    ) -> None:
        self.app, self.headers, self.too_large = app, headers, too_large

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500
        cached = scope["path"].startswith(UNCACHED)

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), *self.headers]
                # the page's own server time (the bench's figure; a browser's devtools show it)
                spent = (time.perf_counter() - began) * 1000
                headers.append((b"server-timing", b"app;dur=%.1f" % spent))
                if not cached and not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append(NO_STORE)
                message["headers"] = headers
            await send(message)

        try:
            if scope["method"] == "POST":
                limit = SIGNIN_BODY_LIMIT if scope["path"] == "/signin" else FORM_BODY_LIMIT
                replay = await _bounded_body(scope, receive, limit)
                if replay is None:
                    await self.too_large(scope)(scope, receive, sending)
                    return
                receive = replay
            await self.app(scope, receive, sending)
        finally:
            if not scope["path"].startswith(("/static", "/metrics", "/healthz", "/readyz")):
                PAGE_SECONDS.labels(scope["method"], str(status)).observe(
                    time.perf_counter() - began
                )


async def _bounded_body(scope: Scope, receive: Receive, limit: int) -> Receive | None:
    """The request body read up to ``limit`` bytes and handed on as it came, or None when it is
    longer (by its ``Content-Length`` before reading anything, else as it streams in)."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                if int(value) > limit:
                    return None
            except ValueError:
                return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client went away: the app sees it as it would have
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    done = False

    async def replay() -> Message:
        nonlocal done
        if not done:
            done = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


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

    def too_large(scope: Scope) -> Response:
        return Ctx(web, Request(scope)).render(
            "error.html",
            413,
            title="Too much to send",
            message="The form held more than this page accepts. Go back and shorten it.",
        )

    headers = security_headers(settings.form_origins())
    return Headers(app, headers, too_large)  # type: ignore[return-value]
