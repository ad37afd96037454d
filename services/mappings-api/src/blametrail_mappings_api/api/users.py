"""``/api/v1/users`` (admin): the organization's people. Disabling a user ends their sessions;
the last enabled admin can be neither demoted nor disabled (409)."""

from __future__ import annotations

from fastapi import APIRouter

from blametrail_mappings_api.api.deps import Admin, Cursor, Limit, page_size
from blametrail_mappings_api.api.problems import answers, busy
from blametrail_mappings_api.api.route import ApiRoute
from blametrail_mappings_api.api.shapes import out, page_of
from blametrail_mappings_api.passwords import Busy
from blametrail_mappings_api.schemas import Page, UserCreate, UserOut, UserPatch

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/users", tags=["users"], route_class=ApiRoute)


@router.get("", summary="List the organization's users", responses=answers(404))
async def list_users(api: Admin, cursor: Cursor = None, limit: Limit = "50") -> Page[UserOut]:
    return page_of(UserOut, await api.identity.users.list(api.org, cursor, page_size(limit)))


@router.post("", summary="Add a user", status_code=201, responses=answers(400, 409, 503))
async def create_user(api: Admin, body: UserCreate) -> UserOut:
    try:
        hashed = await api.identity.hash_password(body.password)
    except Busy as exc:
        raise busy(exc) from None
    row = await api.identity.users.create(api.org, body.email, body.name, body.role, hashed)
    return out(UserOut, row)


@router.patch(
    "/{id}",
    summary="Rename, change the role of, disable or enable a user",
    responses=answers(400, 404, 409),
)
async def patch_user(api: Admin, id: str, body: UserPatch) -> UserOut:
    changes = body.model_dump(exclude_unset=True)
    row = await api.identity.users.update(api.org, id, changes, api.identity.clock())
    return out(UserOut, row)
