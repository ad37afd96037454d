"""What an endpoint is given: :data:`Api` (the caller's organization and the stores, from the app's
state; the key was checked by :class:`~.route.ApiRoute`) and the paging parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from blametrail_mappings_api.errors import Invalid
from blametrail_mappings_api.repository import Repository
from blametrail_mappings_api.settings import ApiSettings
from blametrail_mappings_api.store.read_model import ReadModel

__all__ = ["Api", "Context", "Cursor", "Limit", "page_size"]

_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An organization's API key: `blametrail apikey create --org SLUG`.",
)


@dataclass(frozen=True)
class Context:
    org: str
    repo: Repository
    settings: ApiSettings
    reads: ReadModel
    request: Request


async def _context(
    request: Request,
    _key: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)],  # the OpenAPI scheme
) -> Context:
    state = request.app.state
    return Context(request.state.org, state.repo, state.settings, state.reads, request)


Api = Annotated[Context, Depends(_context)]
Cursor = Annotated[str | None, Query(description="`next_cursor` of the previous page")]
Limit = Annotated[str, Query(description="Page size: an integer from 1 to 200")]


def page_size(limit: str) -> int:
    """``limit`` as a number; :class:`Invalid` (422) unless it is an integer from 1 to 200."""
    if not limit.isdigit() or not 1 <= int(limit) <= 200:
        raise Invalid("limit", "limit must be an integer from 1 to 200")
    return int(limit)
