"""``/api/v1/api-keys`` (admin): the organization's API keys: list, create (the key shown once),
revoke (refused at once afterwards). A key shows the user it was made by; disabling that user
revokes it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from blametrail_mappings_api.api.deps import Admin, Cursor, Limit, page_size
from blametrail_mappings_api.api.problems import answers
from blametrail_mappings_api.api.route import ApiRoute
from blametrail_mappings_api.api.shapes import out, page_of
from blametrail_mappings_api.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut, Page
from blametrail_mappings_api.store.db import Row

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/api-keys", tags=["api-keys"], route_class=ApiRoute)


def _shown(row: Row) -> dict[str, Any]:
    return {k: row[k] for k in ApiKeyOut.model_fields}


@router.get("", summary="List API keys (never the keys themselves)", responses=answers(404))
async def list_api_keys(api: Admin, cursor: Cursor = None, limit: Limit = "50") -> Page[ApiKeyOut]:
    page = await api.identity.keys.list(api.org, cursor, page_size(limit))
    return page_of(ApiKeyOut, page, _shown)


@router.post("", summary="Create an API key (shown once)", status_code=201, responses=answers(400))
async def create_api_key(api: Admin, body: ApiKeyCreate) -> ApiKeyCreated:
    key, row = await api.identity.keys.create_in(api.org, body.name, body.role, api.principal)
    return out(ApiKeyCreated, {**_shown(row), "key": key})


@router.delete(
    "/{id}",
    summary="Revoke an API key (calls with it are refused at once)",
    status_code=204,
    response_class=Response,
    responses=answers(404),
)
async def revoke_api_key(api: Admin, id: str) -> Response:
    await api.identity.keys.revoke(api.org, id, api.identity.clock())
    return Response(status_code=204)
