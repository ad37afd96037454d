"""Ignored webhooks: the audit log (reason, project, time filters), "Map this project" for an
unmapped one, and "Process the ignored webhooks of this project" (a reprocess job, with its
progress and count)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.responses import Response
from starlette.routing import Route

from blametrail_web.pages.common import all_items, first
from blametrail_web.present import since_param
from blametrail_web.web import Ctx, action, page, path_id, uuid_or_none

__all__ = ["routes"]

BASE = "/org/integrations/sentry/ignored"
API = "/api/v1/integrations/sentry/audit"
REASONS = (
    "unmapped",
    "inactive",
    "unknown_connection",
    "uninstalled",
    "unsupported",
    "invalid_payload",
)


@page
async def ignored(c: Ctx) -> Response:
    q = c.request.query_params
    chosen = {k: q[k] for k in ("reason", "project", "since") if q.get(k)}
    params: dict[str, Any] = {k: v for k, v in chosen.items() if k != "since"}
    params["since"] = since_param(chosen.get("since"), datetime.now(UTC))
    listed, mappings = await asyncio.gather(
        c.api.get(API, limit=50, cursor=q.get("cursor") or None, **params),
        all_items(c, "/api/v1/integrations/sentry/mappings"),
    )
    mapped = {(m["connection_id"], m["sentry_project_slug"]): m for m in mappings}
    return c.render(
        "ignored.html",
        items=listed["items"],
        next_cursor=listed.get("next_cursor"),
        cursor=q.get("cursor"),
        chosen=chosen,
        reasons=REASONS,
        mapped=mapped,
    )


@action
async def reprocess(c: Ctx, form: FormData) -> Response:
    connection_id, project = first(form, "connection_id"), first(form, "project_slug")
    job = await c.api.post(
        "/api/v1/audit/reprocess", {"connection_id": connection_id, "project_slug": project}
    )
    job_id = uuid_or_none(job.get("job_id")) or ""
    return c.redirect(f"{BASE}/jobs/{job_id}?project={quote(project, safe='')}")


@page
async def job(c: Ctx) -> Response:
    job_id = path_id(c)
    got = await c.api.get(f"/api/v1/jobs/{job_id}")
    template = "job_status.html" if c.request.query_params.get("fragment") else "job.html"
    return c.render(
        template,
        job=got,
        job_id=job_id,
        project=c.request.query_params.get("project", ""),
    )


def routes() -> list[Route]:
    return [
        Route(BASE, ignored, methods=["GET"]),
        Route(BASE + "/reprocess", reprocess, methods=["POST"]),
        Route(BASE + "/jobs/{id}", job, methods=["GET"]),
    ]
