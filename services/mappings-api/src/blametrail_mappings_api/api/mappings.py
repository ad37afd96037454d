"""``/api/v1/integrations/sentry/mappings``: which Sentry project's incidents go to which service."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.responses import Response

from blametrail_mappings_api.api.deps import Admin, Api, Cursor, Limit, page_size
from blametrail_mappings_api.api.problems import answers
from blametrail_mappings_api.api.route import ApiRoute
from blametrail_mappings_api.api.shapes import out, page_of
from blametrail_mappings_api.errors import Invalid
from blametrail_mappings_api.schemas import MappingCreate, MappingOut, MappingPatch, Page
from blametrail_mappings_api.store.db import Row

__all__ = ["router"]

router = APIRouter(
    prefix="/api/v1/integrations/sentry/mappings", tags=["mappings"], route_class=ApiRoute
)
Filter = Annotated[str | None, Query()]


def _shown(row: Row) -> dict[str, Any]:
    return {k: row[k] for k in MappingOut.model_fields}


@router.get(
    "",
    summary="List project mappings (filters: service_id, active, connection_id)",
    responses=answers(404),
)
async def list_mappings(
    api: Api,
    cursor: Cursor = None,
    limit: Limit = "50",
    service_id: Filter = None,
    active: Annotated[str | None, Query(description="true or false")] = None,
    connection_id: Filter = None,
) -> Page[MappingOut]:
    if active not in (None, "true", "false"):
        raise Invalid("active", "active must be true or false")
    page = await api.repo.mappings.list(
        api.org,
        cursor,
        page_size(limit),
        service_id,
        None if active is None else active == "true",
        connection_id,
    )
    return page_of(MappingOut, page, _shown)


@router.post(
    "", summary="Map a Sentry project to a service", status_code=201, responses=answers(400, 409)
)
async def create_mapping(api: Admin, body: MappingCreate) -> MappingOut:
    return out(MappingOut, _shown(await api.repo.mappings.create(api.org, body.model_dump())))


@router.get("/{id}", summary="Get a mapping", responses=answers(404))
async def get_mapping(api: Api, id: str) -> MappingOut:
    return out(MappingOut, _shown(await api.repo.mappings.get(api.org, id)))


@router.patch("/{id}", summary="Edit a mapping (service, active)", responses=answers(400, 404, 409))
async def patch_mapping(api: Admin, id: str, body: MappingPatch) -> MappingOut:
    row = await api.repo.mappings.update(api.org, id, body.model_dump(exclude_unset=True))
    return out(MappingOut, _shown(row))


@router.delete(
    "/{id}",
    summary="Delete a mapping (permanent)",
    status_code=204,
    response_class=Response,
    responses=answers(404),
)
async def delete_mapping(api: Admin, id: str) -> Response:
    await api.repo.mappings.delete(api.org, id)
    return Response(status_code=204)
