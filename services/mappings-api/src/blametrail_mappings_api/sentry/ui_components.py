"""Sentry UI-component callbacks (PROTOCOL §4), served under ``/sentry`` on the webhook host.

- ``POST /sentry/alert-rule-action``: validates the alert action's settings when a rule is saved.
- ``GET /sentry/options/services`` and ``GET /sentry/options/incidents``: async select options.
- ``POST /sentry/issue-link/create`` and ``POST /sentry/issue-link/link``: the issue-link component.

Each request is signed by Sentry under a client secret of the connection its ``installationId``
belongs to (:mod:`.ui_verify`). Every failure is a 4xx ``{"message": ...}``, which Sentry shows;
every answer comes within ``deadline_s``, under Sentry's 1 s. SQL lives in :mod:`blametrail_mappings_api.store.ui`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import psycopg
from blametrail_common.crypto import SecretBox
from blametrail_common.forwarded import Network
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from blametrail_mappings_api.sentry.ui_guard import AddressWindow, SecretCache
from blametrail_mappings_api.sentry.ui_verify import (
    SEVERITIES,
    Call,
    Guard,
    Refused,
    alert_settings,
    issue,
    issue_fields,
    severity,
    short,
    verified,
)
from blametrail_mappings_api.settings import SentryUiSettings
from blametrail_mappings_api.store.db import Pool
from blametrail_mappings_api.store.ui import Linked, UiRepository

__all__ = ["SEVERITIES", "SentryUiSettings", "ui_routes"]

log = logging.getLogger(__name__)
Handler = Callable[[Call], Awaitable[Response]]


def ui_routes(
    pool: Pool,
    box: SecretBox,
    public_base_url: str,
    settings: SentryUiSettings | None = None,
    proxies: tuple[Network, ...] = (),
) -> list[BaseRoute]:
    """The ``/sentry/...`` routes; ``public_base_url`` is where Sentry and people reach us;
    ``proxies`` the trusted proxies (the client address of the unbound calls' limit)."""
    cfg = settings or SentryUiSettings()
    repo = UiRepository(pool)
    guard = Guard(AddressWindow(cfg.unbound_calls_per_minute), SecretCache(), proxies)
    url = cfg.incident_url or f"{public_base_url.rstrip('/')}/incidents/{{incident_id}}"  # the web

    def link_answer(linked: Linked) -> Response:
        return JSONResponse(
            {
                "webUrl": url.replace("{incident_id}", linked.incident_id),
                "project": linked.service_slug,
                "identifier": linked.incident_id[:8],
            },
            201 if linked.created else 200,
        )

    async def alert_rule_action(call: Call) -> Response:
        settings = alert_settings(call.doc)
        severity(settings.get("severity"))
        service = settings.get("service")
        if not isinstance(service, str) or await repo.service(call.org, service) is None:
            raise Refused(400, f"Unknown service {short(service)}: pick one of your services")
        env = settings.get("environment")
        if env not in (None, "") and (not isinstance(env, str) or len(env) > 64 or "\n" in env):
            raise Refused(400, "Environment must be a Sentry environment name (64 characters max)")
        return JSONResponse({"message": "ok"})

    async def service_options(call: Call) -> Response:
        rows = await repo.services(call.org, call.request.query_params.get("query"))
        options = [{"label": r["name"], "value": str(r["id"])} for r in rows]
        if len(options) == 1:
            options[0]["default"] = True
        return JSONResponse(options)

    async def incident_options(call: Call) -> Response:
        rows = await repo.open_incidents(call.org, call.request.query_params.get("query"))
        return JSONResponse(
            [
                {
                    "label": f"{r['service_slug'] or '?'}#{str(r['incident_id'])[:8]} "
                    f"[{r['severity']}] {r['title']}"[:200],
                    "value": str(r["incident_id"]),
                }
                for r in rows
            ]
        )

    async def create(call: Call) -> Response:
        fields, ref = issue_fields(call.doc), issue(call.doc)
        service_id = fields.get("service")
        service = await repo.service(call.org, service_id) if isinstance(service_id, str) else None
        if service is None:
            raise Refused(400, f"Unknown service {short(service_id)}: pick one of your services")
        level = severity(fields.get("severity") or "sev2")
        title = fields.get("title")
        title = title.strip()[:500] if isinstance(title, str) and title.strip() else None
        linked = await repo.create_incident(
            call.connection, service, ref, title or f"Sentry issue {ref.issue_id}", level
        )
        return link_answer(linked)

    async def link(call: Call) -> Response:
        fields, ref = issue_fields(call.doc), issue(call.doc)
        incident = fields.get("incident")
        if not isinstance(incident, str) or not incident:
            raise Refused(400, "Pick the BlameTrail incident to link")
        linked = await repo.link_incident(call.connection, incident, ref)
        if linked is None:
            raise Refused(404, "No such incident in your BlameTrail organization")
        return link_answer(linked)

    def route(path: str, method: str, handler: Handler) -> Route:
        async def endpoint(request: Request) -> Response:
            try:
                async with asyncio.timeout(cfg.deadline_s):
                    call = await verified(request, repo, box, cfg.public_secrets(), guard)
                    return await handler(call)
            except Refused as r:
                return JSONResponse({"message": r.message}, r.status, headers=r.headers)
            except psycopg.Error as exc:  # PoolTimeout is one too
                log.warning(
                    "sentry ui call failed on Postgres", extra={"error": type(exc).__name__}
                )
                return JSONResponse({"message": "BlameTrail cannot answer now, try again"}, 503)
            except TimeoutError:
                log.warning("sentry ui call over its deadline", extra={"path": path})
                return JSONResponse({"message": "BlameTrail is busy, please try again"}, 503)

        return Route(path, endpoint, methods=[method], name=f"sentry-ui {method} {path}")

    return [
        route("/sentry/alert-rule-action", "POST", alert_rule_action),
        route("/sentry/options/services", "GET", service_options),
        route("/sentry/options/incidents", "GET", incident_options),
        route("/sentry/issue-link/create", "POST", create),
        route("/sentry/issue-link/link", "POST", link),
    ]
