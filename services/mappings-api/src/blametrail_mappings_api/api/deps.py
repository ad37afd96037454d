"""What an endpoint is given: :data:`Api` (who calls, their organization and the stores, from the
app's state; the credential was checked by :class:`~.route.ApiRoute`), :data:`Admin` (the same,
for a route only an admin may call: a member gets 403) and the paging parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from blametrail_mappings_api.api.problems import ApiError
from blametrail_mappings_api.auth import Principal
from blametrail_mappings_api.errors import Invalid
from blametrail_mappings_api.identity import Identity
from blametrail_mappings_api.repository import Repository
from blametrail_mappings_api.settings import ApiSettings
from blametrail_mappings_api.store.read_model import ReadModel

__all__ = ["Admin", "Api", "Context", "Cursor", "Limit", "page_size", "require_admin"]

_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An organization's API key (`blametrail apikey create --org SLUG`, or"
    " `POST /api/v1/api-keys`) or a session token (`POST /api/v1/sessions`).",
)


@dataclass(frozen=True)
class Context:
    org: str
    repo: Repository
    settings: ApiSettings
    reads: ReadModel
    request: Request
    principal: Principal
    """Who acts: a user (through a session) or an API key, with its role."""
    identity: Identity


async def _context(
    request: Request,
    _key: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)],  # the OpenAPI scheme
) -> Context:
    state = request.app.state
    return Context(
        request.state.org,
        state.repo,
        state.settings,
        state.reads,
        request,
        request.state.principal,
        state.identity,
    )


async def require_admin(api: Annotated[Context, Depends(_context)]) -> Context:
    """The context of an admin; :class:`ApiError` 403 for a member (:class:`~.route.ApiRoute`
    refuses them before the body is read; this says it again wherever it is used)."""
    if not api.principal.is_admin:
        raise ApiError(403, "forbidden", "This needs the admin role")
    return api


Api = Annotated[Context, Depends(_context)]
"""Any signed-in caller (admin or member)."""
Admin = Annotated[Context, Depends(require_admin)]
"""An admin only: changes to connections, mappings, services, API keys, users; secret rotation;
reprocessing."""
Cursor = Annotated[str | None, Query(description="`next_cursor` of the previous page")]
Limit = Annotated[str, Query(description="Page size: an integer from 1 to 200")]


def page_size(limit: str) -> int:
    """``limit`` as a number; :class:`Invalid` (422) unless it is an integer from 1 to 200."""
    # isdigit() alone admits "²" and other digits int() refuses (a 500, not a 422)
    if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= 200:
        raise Invalid("limit", "limit must be an integer from 1 to 200")
    return int(limit)
