"""``/api/v1/incidents``: the projection's incidents, read as stored (newest first)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.responses import JSONResponse, Response

from blametrail_mappings_api.api.deps import Api, Cursor, Limit, page_size
from blametrail_mappings_api.api.problems import answers
from blametrail_mappings_api.api.route import ApiRoute
from blametrail_mappings_api.api.shapes import plain
from blametrail_mappings_api.schemas import IncidentOut, IncidentSummary, Page
from blametrail_mappings_api.store.db import Row

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/incidents", tags=["incidents"], route_class=ApiRoute)
Filter = Annotated[str | None, Query()]

_SUMMARY = (
    "incident_id",
    "service_id",
    "source",
    "status",
    "severity",
    "title",
    "culprit",
    "assignee",
    "first_seen",
    "last_seen",
    "event_count",
    "opened_at",
    "resolved_at",
    "updated_at",
)
_LINK = ("issue_id", "short_id", "web_url", "project_slug", "metric_alert_id")


def _summary(row: Row) -> dict[str, Any]:
    sentry = row["sentry"] or {}
    return {**{k: row[k] for k in _SUMMARY}, "sentry": {k: sentry.get(k) for k in _LINK}}


@router.get(
    "",
    summary="List incidents, newest first (filters: service, status, severity, source, since)",
    response_model=Page[IncidentSummary],
    responses=answers(404),
)
async def list_incidents(
    api: Api,
    cursor: Cursor = None,
    limit: Limit = "50",
    service: Filter = None,
    status: Filter = None,
    severity: Filter = None,
    source: Filter = None,
    since: Annotated[str | None, Query(description="ISO 8601 time")] = None,
) -> Response:
    filters = {
        "service": service,
        "status": status,
        "severity": severity,
        "source": source,
        "since": since,
    }
    rows, next_cursor = await api.reads.incidents(api.org, filters, cursor, page_size(limit))
    return JSONResponse({"items": plain([_summary(r) for r in rows]), "next_cursor": next_cursor})


@router.get(
    "/{id}",
    summary="An incident: state, Sentry link, timeline, enrichment (tags, stacktrace, breadcrumbs,"
    " user...) and suspect deploys ranked with each signal's contribution",
    response_model=IncidentOut,
    responses=answers(404),
)
async def get_incident(api: Api, id: str) -> Response:
    found = await api.reads.incident(api.org, id)
    enrichment, suspects = found["enrichment"], found["suspects"]
    body = {
        **_summary(found),
        "sentry": found["sentry"],
        "timeline": [
            {
                "event_id": t["event_id"],
                "type": t["event_type"],
                "occurred_at": t["occurred_at"],
                "payload": t["payload"],
            }
            for t in found["timeline"]
        ],
        "enrichment": None
        if enrichment is None
        else {
            "status": enrichment["status"],
            "reason": enrichment["reason"],
            "fetched_at": enrichment["fetched_at"],
            **(enrichment["record"] or {}),
        },
        "sentry_links": found["links"],
        "suspects": None
        if suspects is None
        else {
            "computed_at": suspects["computed_at"],
            "candidates": suspects["candidates"],
            "ranked": suspects["suspects"],
        },
    }
    return JSONResponse(plain(body))
