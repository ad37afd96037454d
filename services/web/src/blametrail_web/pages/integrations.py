"""Organization > Integrations > Sentry: each connection with its health and webhook URL, secret
rotation, "Connect with Sentry" (the public app) and the internal-integration form."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from blametrail_web.api import ApiProblem
from blametrail_web.pages.common import all_items, first
from blametrail_web.web import Ctx, action, page, path_id

__all__ = ["routes"]

BASE = "/org/integrations/sentry"
API = "/api/v1/integrations/sentry/connections"


async def _health(c: Ctx, connection_id: str) -> dict[str, Any] | None:
    try:
        got: dict[str, Any] = await c.api.get(f"{API}/{quote(connection_id, safe='')}/health")
    except ApiProblem as exc:
        if exc.status == 401:
            raise
        return None
    return got


async def _page(c: Ctx, status: int = 200, **extra: Any) -> Response:
    connections = await all_items(c, API)
    health = await asyncio.gather(*(_health(c, x["id"]) for x in connections))
    extra.setdefault("errors", {})
    extra.setdefault("values", {})
    return c.render(
        "integrations.html",
        status,
        connections=[{**x, "health": h} for x, h in zip(connections, health, strict=True)],
        **extra,
    )


@page
async def integrations(c: Ctx) -> Response:
    return await _page(c)


@action
async def connect_internal(c: Ctx, form: FormData) -> Response:
    values = {k: first(form, k) for k in ("sentry_org_slug", "api_base_url")}
    body = {
        "mode": "internal",
        "sentry_org_slug": values["sentry_org_slug"],
        "api_base_url": values["api_base_url"] or "https://sentry.io",
        "client_secret": first(form, "client_secret"),
        "auth_token": first(form, "auth_token"),
    }
    errors = {
        k: m
        for k, m in (
            ("sentry_org_slug", "Enter the Sentry organization slug"),
            ("client_secret", "Paste the integration's client secret"),
            ("auth_token", "Paste the integration's token"),
        )
        if not body[k]
    }
    if not errors:
        try:
            row = await c.api.post(API, body)
        except ApiProblem as exc:
            if exc.status not in (400, 409, 422, 502):
                raise
            errors = exc.field_messages() or {"auth_token": exc.message}
        else:
            c.say(
                f"Connected Sentry organization {row['sentry_org_slug']}. Paste its webhook "
                "URL into the integration's settings in Sentry."
            )
            return c.redirect(BASE)
    return await _page(c, 400, errors=errors, values=values)


@action
async def connect_public(c: Ctx, form: FormData) -> Response:
    try:
        link = await c.api.post("/api/v1/integrations/sentry/connect", {})
    except ApiProblem as exc:
        if exc.status != 503:
            raise
        c.say(f"Connect with Sentry is not available here: {exc.message}")
        return c.redirect(BASE)
    return c.finish(RedirectResponse(str(link["url"]), 303))


@action
async def rotate_secret(c: Ctx, form: FormData) -> Response:
    ident = path_id(c)
    secret, retire = first(form, "client_secret"), first(form, "retire_old_secrets") == "1"
    if not secret and not retire:
        return await _page(
            c, 400, errors={f"rotate-{ident}": "Paste the new client secret"}, values={}
        )
    body: dict[str, Any] = {"retire_old_secrets": retire}
    if secret:
        body["client_secret"] = secret
    try:
        await c.api.patch(f"{API}/{ident}", body)
    except ApiProblem as exc:
        if exc.status not in (400, 409, 422):
            raise
        return await _page(c, 400, errors={f"rotate-{ident}": exc.message}, values={})
    c.say(
        "Old client secrets retired."
        if retire and not secret
        else "New client secret saved; the previous one stays valid until you retire it."
    )
    return c.redirect(BASE)


def routes() -> list[Route]:
    return [
        Route("/org", lambda r: RedirectResponse(BASE, 303), methods=["GET"]),
        Route(BASE, integrations, methods=["GET"]),
        Route(BASE + "/internal", connect_internal, methods=["POST"]),
        Route(BASE + "/connect", connect_public, methods=["POST"]),
        Route(BASE + "/connections/{id}/rotate", rotate_secret, methods=["POST"]),
    ]
