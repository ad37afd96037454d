"""``/api/v1/deploys``: the deploy history suspects are ranked from."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.responses import Response

from blametrail_mappings_api.api.deps import Admin, Api, Cursor, Limit, page_size
from blametrail_mappings_api.api.problems import answers
from blametrail_mappings_api.api.route import ApiRoute
from blametrail_mappings_api.api.shapes import out, page_of
from blametrail_mappings_api.errors import Invalid
from blametrail_mappings_api.schemas import DeployCreate, DeployOut, Page
from blametrail_mappings_api.store.db import Row

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/deploys", tags=["deploys"], route_class=ApiRoute)


def _shown(row: Row) -> dict[str, Any]:
    return {k: row[k] for k in DeployOut.model_fields}


@router.post(
    "",
    summary="Record a deploy (201; 200 when re-posted)",
    status_code=201,
    responses={200: {"model": DeployOut, "description": "Re-posted: updated"}, **answers(400)},
)
async def create_deploy(api: Admin, body: DeployCreate, response: Response) -> DeployOut:
    row, created = await api.repo.deploys.create(api.org, body.model_dump())
    if not created:
        response.status_code = 200
    return out(DeployOut, _shown(row))


@router.get("", summary="List deploys (filters: service, since)", responses=answers(404))
async def list_deploys(
    api: Api,
    cursor: Cursor = None,
    limit: Limit = "50",
    service: Annotated[str | None, Query(description="a service id")] = None,
    since: Annotated[str | None, Query(description="ISO 8601 time with a time zone")] = None,
) -> Page[DeployOut]:
    when = None
    if since:
        try:
            when = datetime.fromisoformat(since)
        except ValueError:
            raise Invalid("since", "since must be an ISO 8601 time") from None
        if when.tzinfo is None:
            raise Invalid("since", "since needs a time zone (e.g. Z)")
    page = await api.repo.deploys.list(api.org, cursor, page_size(limit), service, when)
    return page_of(DeployOut, page, _shown)
