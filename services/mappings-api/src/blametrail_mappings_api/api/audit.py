"""``/api/v1/integrations/sentry/audit``: webhooks received but not turned into incidents."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import JSONResponse, Response

from blametrail_mappings_api.api.deps import Api, Cursor, Limit, page_size
from blametrail_mappings_api.api.problems import answers
from blametrail_mappings_api.api.route import ApiRoute
from blametrail_mappings_api.api.shapes import plain
from blametrail_mappings_api.schemas import AuditEntry, Page

__all__ = ["router"]

router = APIRouter(tags=["audit"], route_class=ApiRoute)
Filter = Annotated[str | None, Query()]


@router.get(
    "/api/v1/integrations/sentry/audit",
    summary="Webhooks received but not turned into incidents (filters: reason, project, since)",
    response_model=Page[AuditEntry],
    responses=answers(404),
)
async def list_audit(
    api: Api,
    cursor: Cursor = None,
    limit: Limit = "50",
    reason: Filter = None,
    project: Filter = None,
    since: Annotated[str | None, Query(description="ISO 8601 time")] = None,
) -> Response:
    filters = {"reason": reason, "project": project, "since": since}
    rows, next_cursor = await api.reads.audit(api.org, filters, cursor, page_size(limit))
    return JSONResponse({"items": plain(rows), "next_cursor": next_cursor})
