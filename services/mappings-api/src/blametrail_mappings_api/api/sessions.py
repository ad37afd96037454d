"""``/api/v1/sessions``: signing in (email and password to a session token), signing out (this
session, or every session of the caller); ``/api/v1/me``: who calls."""

from __future__ import annotations

from blametrail_common.forwarded import client_address
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from blametrail_mappings_api.api.deps import Api
from blametrail_mappings_api.api.problems import ApiError, answers, busy
from blametrail_mappings_api.api.route import ApiRoute, PublicApiRoute
from blametrail_mappings_api.identity import Identity, Refused, Throttled
from blametrail_mappings_api.passwords import Busy
from blametrail_mappings_api.schemas import MeOut, SessionCreate, SessionOut, UserBrief

__all__ = ["public", "router"]

public = APIRouter(tags=["sessions"], route_class=PublicApiRoute)
router = APIRouter(tags=["sessions"], route_class=ApiRoute)

WRONG = ApiError(401, "unauthorized", "Wrong email or password")


@public.post(
    "/api/v1/sessions",
    summary="Sign in: email and password to a session token (throttled per account and address)",
    status_code=201,
    responses=answers(400, 429, 503),
    openapi_extra={"security": []},
)
async def sign_in(request: Request, body: SessionCreate) -> SessionOut:
    state = request.app.state
    identity: Identity = state.identity
    address = client_address(
        request.client.host if request.client else None,
        request.headers.getlist("x-forwarded-for"),
        state.settings.proxies(),
    )
    try:
        done = await identity.sign_in(body.email, body.password, address)
    except Refused:
        raise WRONG from None
    except Busy as exc:
        raise busy(exc) from None
    except Throttled as exc:
        raise ApiError(
            429,
            "throttled",
            f"Too many failed sign-ins: try again in {exc.retry_after_s} seconds",
            headers={"Retry-After": str(exc.retry_after_s)},
        ) from None
    user = done.user
    org_slug = await identity.users.org_slug(str(user["org_id"]))
    return SessionOut(
        token=done.token,
        expires_at=done.session["expires_at"],
        idle_timeout_s=state.settings.session_idle_s,
        user=UserBrief(
            id=str(user["id"]),
            email=user["email"],
            name=user["name"],
            role=user["role"],
            org=org_slug,
        ),
    )


def _session_of(api: Api) -> str:
    if api.principal.session_id is None:
        raise ApiError(400, "not_a_session", "this call is made with an API key, not a session")
    return api.principal.session_id


@router.delete(
    "/api/v1/sessions/current",
    summary="Sign out: end this session",
    status_code=204,
    response_class=Response,
    responses=answers(400),
)
async def sign_out(api: Api) -> Response:
    await api.identity.sessions.revoke(_session_of(api), api.identity.clock())
    return Response(status_code=204)


@router.delete(
    "/api/v1/sessions",
    summary="Sign out everywhere: end every session of the caller's user",
    status_code=204,
    response_class=Response,
    responses=answers(400),
)
async def sign_out_everywhere(api: Api) -> Response:
    _session_of(api)
    await api.identity.sessions.revoke_all(api.principal.id, api.identity.clock())
    return Response(status_code=204)


@router.get("/api/v1/me", summary="Who calls: a signed-in user or an API key", responses=answers())
async def me(api: Api) -> MeOut:
    p = api.principal
    return MeOut(kind=p.kind, id=p.id, email=p.email, name=p.name, role=p.role, org=p.org_slug)
