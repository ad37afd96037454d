"""The browser's side of an OAuth install (Starlette routes, HTML answers):
``GET /integrations/sentry/connect`` (the connect link: state into a cookie, off to Sentry),
``GET /integrations/sentry/oauth/callback`` (Sentry's redirect back: exchange, verify, ask) and
``POST /integrations/sentry/oauth/confirm`` (the person confirmed: bind). The decisions are
:class:`~.oauth.OAuth`'s."""

from __future__ import annotations

import hmac
import html
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from blametrail_mappings_api.sentry.client import SentryAuthRefused, SentryUnavailable
from blametrail_mappings_api.sentry.oauth import OAuth
from blametrail_mappings_api.sentry.state import COOKIE, ConnectState, OAuthRefused
from blametrail_mappings_api.store.db import Row

__all__ = ["oauth_routes"]


def _page(status: int, title: str, text: str) -> HTMLResponse:
    body = (
        f"<!doctype html><title>{html.escape(title)}</title>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"
    )
    return HTMLResponse(body, status)


def _not_configured() -> HTMLResponse:
    return _page(503, "Not configured", "OAuth installs are not configured here.")


def _connected(row: Row) -> Response:
    resp = _page(
        200,
        "Sentry connected",
        f"Sentry organization {row['sentry_org_slug']} is connected"
        f" (connection {row['id']}). Map its projects to services to receive incidents.",
    )
    resp.delete_cookie(COOKIE, path="/integrations/sentry")
    return resp


def _confirm_page(sentry_org: str, bt_org: str, installation: str, token: str) -> HTMLResponse:
    body = (
        "<!doctype html><title>Connect Sentry</title><h1>Connect Sentry</h1>"
        f"<p>Send incidents of Sentry organization <b>{html.escape(sentry_org)}</b> to the"
        f" BlameTrail organization <b>{html.escape(bt_org)}</b>?</p>"
        '<form method="post" action="/integrations/sentry/oauth/confirm">'
        f'<input type="hidden" name="installationId" value="{html.escape(installation)}">'
        f'<input type="hidden" name="token" value="{token}">'
        '<button type="submit">Connect</button></form>'
        "<p>If you did not start this from your BlameTrail organization, close this page"
        " and uninstall the app in Sentry.</p>"
    )
    return HTMLResponse(body, 200)


def oauth_routes(oauth: OAuth | None, states: ConnectState, public_url: str) -> list[BaseRoute]:
    """``GET /integrations/sentry/connect``, ``GET /integrations/sentry/oauth/callback`` and
    ``POST /integrations/sentry/oauth/confirm``."""
    secure = public_url.startswith("https://")

    async def connect(request: Request) -> Response:
        if oauth is None:
            return _not_configured()
        state = request.query_params.get("state")
        try:
            states.verify(state, oauth.clock())
        except OAuthRefused as exc:
            return _page(exc.status, "Cannot connect Sentry", exc.message)
        target = (
            f"{oauth.settings.sentry_url.rstrip('/')}/sentry-apps/"
            f"{oauth.settings.app_slug}/external-install/"
        )
        resp = RedirectResponse(target, 302)
        resp.set_cookie(
            COOKIE,
            str(state),
            max_age=oauth.settings.connect_ttl_s,
            path="/integrations/sentry",
            httponly=True,
            secure=secure,
            samesite="lax",
        )
        return resp

    async def callback(request: Request) -> Response:
        """Exchange and verify, then ask the person to confirm which BlameTrail organization
        gets this Sentry organization: a connect link someone else slipped into the browser
        names *their* organization, and this page says so before anything is bound."""
        if oauth is None:
            return _not_configured()
        q = request.query_params
        installation, code = q.get("installationId"), q.get("code")
        if not installation or not code:
            return _page(400, "Cannot connect Sentry", "installationId and code are required")
        state = request.cookies.get(COOKIE)
        try:
            org = states.verify(state, oauth.clock())
            row = await oauth.prepare(installation, code, org)
        except OAuthRefused as exc:
            return _page(exc.status, "Cannot connect Sentry", exc.message)
        except SentryAuthRefused as exc:
            return _page(
                400,
                "Cannot connect Sentry",
                f"Sentry refused the install code ({exc.detail}). Install again from BlameTrail.",
            )
        except SentryUnavailable:
            return _page(502, "Cannot connect Sentry", "Sentry did not answer; reload to retry.")
        if row["status"] == "bound":
            return _connected(await oauth.confirm(installation, org))
        token = states.confirm_token(str(state), installation)
        return _confirm_page(row["sentry_org_slug"], await oauth.org_slug(org), installation, token)

    async def confirm(request: Request) -> Response:
        if oauth is None:
            return _not_configured()
        form = parse_qs((await request.body())[:4096].decode("utf-8", "replace"))
        installation = (form.get("installationId") or [""])[0]
        token = (form.get("token") or [""])[0]
        state = request.cookies.get(COOKIE)
        try:
            org = states.verify(state, oauth.clock())
            expected = states.confirm_token(str(state), installation)
            if not installation or not hmac.compare_digest(token.encode(), expected.encode()):
                raise OAuthRefused(400, "this confirmation is not valid; install again")
            row = await oauth.confirm(installation, org)
        except OAuthRefused as exc:
            return _page(exc.status, "Cannot connect Sentry", exc.message)
        return _connected(row)

    return [
        Route("/integrations/sentry/connect", connect, methods=["GET"]),
        Route("/integrations/sentry/oauth/callback", callback, methods=["GET"]),
        Route("/integrations/sentry/oauth/confirm", confirm, methods=["POST"]),
    ]
