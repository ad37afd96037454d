"""What every page shares: the per-request context (the API acting with the browser's session,
who is signed in, the CSRF token), rendering with the layout, and the two decorators every route
goes through: :func:`page` (signed in, API errors become pages) and :func:`action` (the same, for
a state-changing POST: the CSRF token is checked before anything else)."""

from __future__ import annotations

import functools
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from blametrail_common.forwarded import Network
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from blametrail_web import present
from blametrail_web.api import Api, ApiProblem, ApiUnavailable
from blametrail_web.security import (
    csrf_token,
    csrf_valid,
    forward_for,
    safe_url,
    sign_value,
    unsign_value,
)
from blametrail_web.settings import WebSettings

__all__ = ["SESSION", "Ctx", "Web", "action", "page", "path_id", "redirect", "uuid_or_none"]

SESSION = "bt_session"  # the API session token (HttpOnly)
WHO = "bt_who"  # signed {name, email, role, org} for the header (display only: the API decides)
PRE = "bt_pre"  # pre-session CSRF nonce (the sign-in form)
FLASH = "bt_flash"  # signed one-time message for the next page

TEMPLATES = Path(__file__).parent / "templates"


@dataclass
class Web:
    settings: WebSettings
    key: bytes
    http: httpx.AsyncClient
    env: Environment
    proxies: tuple[Network, ...]

    @classmethod
    def build(cls, settings: WebSettings, key: bytes, http: httpx.AsyncClient) -> Web:
        env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            # Every template is HTML: autoescape on whatever the file is called (Sentry's strings
            # are attacker-controlled); nothing is ever marked safe from data.
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
            # templates ship with the code: compiled once, never a stat of each file per page
            auto_reload=False,
        )
        env.filters.update(present.FILTERS)
        env.filters["safe_url"] = safe_url
        env.globals.update(present.GLOBALS)
        return cls(settings, key, http, env, settings.proxies())


class Ctx:
    """One request's view: who, the API as them, and how to answer."""

    def __init__(self, web: Web, request: Request) -> None:
        self.web, self.request = web, request
        self.token = request.cookies.get(SESSION) or None
        self.who: dict[str, Any] = unsign_value(web.key, WHO, request.cookies.get(WHO)) or {}
        peer = request.client.host if request.client else None
        received = request.headers.getlist("x-forwarded-for")
        self.api = Api(web.http, self.token, forward_for(peer, received, web.proxies))
        self.pre = request.cookies.get(PRE) or ""
        self._new_pre = ""
        self._set_flash: str | None = None
        self.flash: str | None = unsign_value(web.key, FLASH, request.cookies.get(FLASH))

    @property
    def is_admin(self) -> bool:
        return self.who.get("role") == "admin"

    def binding(self) -> str:
        if self.token:
            return "s:" + self.token
        if not self.pre:
            self.pre = self._new_pre = secrets.token_urlsafe(24)
        return "p:" + self.pre

    def csrf(self) -> str:
        return csrf_token(self.web.key, self.binding())

    def csrf_ok(self, presented: str | None) -> bool:
        binding = ("s:" + self.token) if self.token else ("p:" + self.pre if self.pre else "")
        return csrf_valid(self.web.key, binding, presented)

    def say(self, message: str) -> None:
        """A message for the next page (after a redirect)."""
        self._set_flash = message

    def render(self, template: str, status: int = 200, **data: Any) -> Response:
        body = self.web.env.get_template(template).render(
            request=self.request,
            who=self.who,
            is_admin=self.is_admin,
            csrf=self.csrf(),
            flash=self.flash,
            path=self.request.url.path,
            poll_ms=int(self.web.settings.poll_interval_s * 1000),
            **data,
        )
        return self.finish(HTMLResponse(body, status))

    def finish(self, response: Response) -> Response:
        secure = self.web.settings.cookie_secure
        if self._new_pre:
            response.set_cookie(
                PRE, self._new_pre, httponly=True, samesite="lax", secure=secure, path="/"
            )
        if self.flash is not None:
            response.delete_cookie(FLASH, path="/")
        if self._set_flash is not None:
            response.set_cookie(
                FLASH,
                sign_value(self.web.key, FLASH, self._set_flash[:500]),
                httponly=True,
                samesite="lax",
                secure=secure,
                path="/",
                max_age=120,
            )
        return response

    def sign_in(self, response: Response, token: str, who: dict[str, Any]) -> Response:
        secure = self.web.settings.cookie_secure
        response.set_cookie(SESSION, token, httponly=True, samesite="lax", secure=secure, path="/")
        response.set_cookie(
            WHO,
            sign_value(self.web.key, WHO, who),
            httponly=True,
            samesite="lax",
            secure=secure,
            path="/",
        )
        response.delete_cookie(PRE, path="/")
        return response

    def sign_out(self, response: Response) -> Response:
        for name in (SESSION, WHO):
            response.delete_cookie(name, path="/")
        return response

    def redirect(self, url: str) -> Response:
        return self.finish(RedirectResponse(url, 303))


def redirect(c: Ctx, url: str) -> Response:
    return c.redirect(url)


def uuid_or_none(value: object) -> str | None:
    """``value`` as a canonical UUID (hex and hyphens only), or None: ids from URLs and forms
    are never put into an API path as they came."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def path_id(c: Ctx, name: str = "id") -> str:
    """The route's ``{id}`` as a canonical UUID; anything else is the Not found page."""
    found = uuid_or_none(c.request.path_params.get(name))
    if found is None:
        raise ApiProblem(404, {"error": "not_found", "message": "No such object."})
    return found


Handler = Callable[[Ctx], Awaitable[Response]]
FormHandler = Callable[[Ctx, FormData], Awaitable[Response]]


def _web(request: Request) -> Web:
    web: Web = request.app.state.web
    return web


def _to_signin(c: Ctx, message: str) -> Response:
    target = c.request.url.path
    if c.request.method == "GET" and c.request.url.query:
        target += "?" + c.request.url.query
    c.say(message)
    response = c.redirect("/signin?next=" + quote(target, safe=""))
    return c.sign_out(response)


async def _guarded(c: Ctx, run: Callable[[], Awaitable[Response]]) -> Response:
    try:
        return await run()
    except ApiProblem as exc:
        if exc.status == 401:
            return _to_signin(c, "Your session has ended: sign in again.")
        if exc.status == 403:
            return c.render("error.html", 403, title="Not allowed", message=exc.message)
        if exc.status == 404:
            return c.render(
                "error.html",
                404,
                title="Not found",
                message="There is nothing here, or it belongs to another organization.",
            )
        if exc.status == 429:
            wait = f" Try again in {exc.retry_after} s." if exc.retry_after else ""
            return c.render(
                "error.html", 429, title="Too many requests", message=exc.message + wait
            )
        return c.render("error.html", 502, title="Something went wrong", message=exc.message)
    except ApiUnavailable:
        return c.render(
            "error.html",
            503,
            title="BlameTrail is unavailable",
            message="The API did not answer. Try again in a moment.",
        )


def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A GET page for a signed-in person."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        c = Ctx(_web(request), request)
        if not c.token:
            return _to_signin(c, "Sign in to continue.")
        return await _guarded(c, lambda: handler(c))

    return endpoint


def action(handler: FormHandler) -> Callable[[Request], Awaitable[Response]]:
    """A state-changing POST: refused (403) without a valid CSRF token, before anything else."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        c = Ctx(_web(request), request)
        form = await request.form()
        presented = form.get("csrf") or request.headers.get("x-csrf-token")
        if not c.csrf_ok(presented if isinstance(presented, str) else None):
            return c.render(
                "error.html",
                403,
                title="This form has expired",
                message="The page was open too long or came from another site. "
                "Go back, reload the page and try again.",
            )
        if not c.token and request.url.path != "/signin":
            return _to_signin(c, "Sign in to continue.")
        return await _guarded(c, lambda: handler(c, form))

    endpoint.csrf_checked = True  # type: ignore[attr-defined]
    return endpoint
