"""Incidents: the list (filters, keyset pages, new incidents without a reload) and the detail."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import FormData
from starlette.responses import Response
from starlette.routing import Route

from blametrail_web.api import ApiProblem
from blametrail_web.pages.common import all_items
from blametrail_web.present import since_param
from blametrail_web.web import Ctx, action, page, path_id

__all__ = ["ACTIONS", "routes"]

FILTERS = ("service", "status", "severity", "source", "since")
STATUSES = ("open", "acknowledged", "resolved", "muted")
SEVERITIES = ("sev1", "sev2", "sev3", "sev4", "sev5")
SOURCES = ("sentry_issue", "sentry_metric_alert")
ACTIONS = {
    "acknowledge": "Acknowledge",
    "resolve": "Resolve",
    "reopen": "Reopen",
}
"""Incident actions (the API's ``POST /api/v1/incidents/{id}/<verb>``), shown on the detail."""
APPLIES_TO = {
    "acknowledge": frozenset({"open"}),
    "resolve": frozenset({"open", "acknowledged", "muted"}),
    "reopen": frozenset({"resolved", "muted"}),
}
"""The statuses each action applies to (the API answers 409 otherwise): only those are shown."""


def _filters(c: Ctx) -> dict[str, str]:
    q = c.request.query_params
    return {k: q[k] for k in FILTERS if q.get(k)}


async def _list(c: Ctx) -> dict[str, Any]:
    chosen = _filters(c)
    params: dict[str, Any] = {k: v for k, v in chosen.items() if k != "since"}
    params["since"] = since_param(chosen.get("since"), datetime.now(UTC))
    cursor = c.request.query_params.get("cursor") or None
    page_, services = await asyncio.gather(
        c.api.get("/api/v1/incidents", limit=50, cursor=cursor, **params),
        all_items(c, "/api/v1/services"),
    )
    return {
        "items": page_["items"],
        "next_cursor": page_.get("next_cursor"),
        "cursor": cursor,
        "chosen": chosen,
        "services": services,
        "service_names": {s["id"]: s["name"] for s in services},
    }


@page
async def incidents(c: Ctx) -> Response:
    data = await _list(c)
    return c.render(
        "incidents.html",
        statuses=STATUSES,
        severities=SEVERITIES,
        sources=SOURCES,
        **data,
    )


@page
async def incident_rows(c: Ctx) -> Response:
    """The first page's rows alone: what the list's script swaps in to show new incidents."""
    return c.render("incident_rows.html", **await _list(c))


@page
async def incident(c: Ctx) -> Response:
    ident = path_id(c)
    found, services = await asyncio.gather(
        c.api.get(f"/api/v1/incidents/{ident}"), all_items(c, "/api/v1/services")
    )
    names = {s["id"]: s["name"] for s in services}
    status = found.get("status")
    shown = {v: label for v, label in ACTIONS.items() if status in APPLIES_TO[v]}
    return c.render("incident.html", i=found, service_names=names, actions=shown)


@action
async def incident_action(c: Ctx, form: FormData) -> Response:
    ident, verb = path_id(c), c.request.path_params["verb"]
    if verb not in ACTIONS:
        return c.render("error.html", 404, title="Not found", message="No such action.")
    try:
        await c.api.post(f"/api/v1/incidents/{ident}/{verb}", {})
    except ApiProblem as exc:
        if exc.status in (404, 405) and exc.error == "http":  # the route itself is not there
            c.say(f"{ACTIONS[verb]} is not available yet.")
            return c.redirect(f"/incidents/{ident}")
        if exc.status in (409, 422):
            c.say(exc.message)
            return c.redirect(f"/incidents/{ident}")
        raise
    c.say(f"{ACTIONS[verb]}: done.")
    return c.redirect(f"/incidents/{ident}")


def routes() -> list[Route]:
    return [
        Route("/incidents", incidents, methods=["GET"]),
        Route("/incidents/rows", incident_rows, methods=["GET"]),
        Route("/incidents/{id}", incident, methods=["GET"]),
        Route("/incidents/{id}/{verb}", incident_action, methods=["POST"]),
    ]
