"""``/api/v1/services``: the services incidents are routed to."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from blametrail_mappings_api.api.deps import Admin, Api, Cursor, Limit, page_size
from blametrail_mappings_api.api.problems import answers
from blametrail_mappings_api.api.route import ApiRoute
from blametrail_mappings_api.api.shapes import out, page_of
from blametrail_mappings_api.schemas import Page, ServiceCreate, ServiceOut, ServicePatch

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/services", tags=["services"], route_class=ApiRoute)


@router.get("", summary="List services", responses=answers(404))
async def list_services(api: Api, cursor: Cursor = None, limit: Limit = "50") -> Page[ServiceOut]:
    return page_of(ServiceOut, await api.repo.services.list(api.org, cursor, page_size(limit)))


@router.post("", summary="Create a service", status_code=201, responses=answers(400, 409))
async def create_service(api: Admin, body: ServiceCreate) -> ServiceOut:
    return out(ServiceOut, await api.repo.services.create(api.org, body.model_dump()))


@router.get("/{id}", summary="Get a service", responses=answers(404))
async def get_service(api: Api, id: str) -> ServiceOut:
    return out(ServiceOut, await api.repo.services.get(api.org, id))


@router.patch("/{id}", summary="Edit a service", responses=answers(400, 404, 409))
async def patch_service(api: Admin, id: str, body: ServicePatch) -> ServiceOut:
    changes = body.model_dump(exclude_unset=True)
    return out(ServiceOut, await api.repo.services.update(api.org, id, changes))


@router.delete(
    "/{id}",
    summary="Delete a service (409 while mappings target it)",
    status_code=204,
    response_class=Response,
    responses=answers(404, 409),
)
async def delete_service(api: Admin, id: str) -> Response:
    await api.repo.services.delete(api.org, id)
    return Response(status_code=204)
