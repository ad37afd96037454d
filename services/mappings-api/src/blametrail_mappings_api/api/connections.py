"""``/api/v1/integrations/sentry/connections``: Sentry organizations connected as internal
integrations (OAuth ones are made by the install flow), and ``.../connect``: the link that starts
an OAuth install."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import APIRouter
from starlette.responses import JSONResponse, Response

from blametrail_mappings_api.api.deps import Admin, Api, Context, Cursor, Limit, page_size
from blametrail_mappings_api.api.problems import ApiError, answers
from blametrail_mappings_api.api.route import ApiRoute
from blametrail_mappings_api.api.shapes import out, page_of, plain
from blametrail_mappings_api.schemas import (
    ConnectionCreate,
    ConnectionHealth,
    ConnectionOut,
    ConnectionPatch,
    ConnectLinkOut,
    Page,
    SentryProject,
    SentryProjects,
)
from blametrail_mappings_api.sentry.oauth import OAuth
from blametrail_mappings_api.sentry.projects import SentryError, check_connection, list_projects
from blametrail_mappings_api.store.db import Row
from blametrail_mappings_api.store.health import connection_health

__all__ = ["router"]

PATH = "/api/v1/integrations/sentry/connections"
router = APIRouter(tags=["connections"], route_class=ApiRoute)

_SHOWN = (
    "id",
    "mode",
    "sentry_org_slug",
    "api_base_url",
    "enabled",
    "writeback",
    "installation_uuid",
    "token_expires_at",
    "created_at",
    "updated_at",
)


def _shown(api: Context, row: Row) -> dict[str, Any]:
    """What a connection shows: its secrets only as whether they are set."""
    return {
        **{k: row[k] for k in _SHOWN},
        "webhook_url": f"{api.settings.public_ingest_url.rstrip('/')}/webhooks/sentry"
        + ("" if row["mode"] == "oauth" else f"/{row['id']}"),
        "client_secrets_set": len(row["client_secrets_enc"]),
        "auth_token_set": row["auth_token_enc"] is not None,
    }


@router.get(PATH, summary="List Sentry connections", responses=answers(404))
async def list_connections(
    api: Api, cursor: Cursor = None, limit: Limit = "50"
) -> Page[ConnectionOut]:
    page = await api.repo.connections.list(api.org, cursor, page_size(limit))
    return page_of(ConnectionOut, page, lambda row: _shown(api, row))


@router.post(
    PATH,
    summary="Connect a Sentry organization (internal integration)",
    status_code=201,
    responses=answers(400, 409, 502),
)
async def create_connection(api: Admin, body: ConnectionCreate) -> ConnectionOut:
    verifier: httpx.AsyncClient | None = api.request.app.state.verify_connections
    if verifier is not None:  # one call to Sentry with the token before anything is saved
        try:
            await check_connection(
                verifier, body.api_base_url, body.sentry_org_slug, body.auth_token
            )
        except SentryError as exc:
            if exc.refused:
                raise ApiError(400, "sentry_refused", exc.detail) from None
            raise ApiError(502, "sentry", exc.detail) from None
    row = await api.repo.connections.create(api.org, body.model_dump())
    return out(ConnectionOut, _shown(api, row))


@router.post(
    "/api/v1/integrations/sentry/connect",
    summary="A link that installs the public Sentry app for this organization (OAuth)",
    status_code=201,
    responses=answers(503),
)
async def create_connect_link(api: Admin) -> ConnectLinkOut:
    state = api.request.app.state
    oauth: OAuth | None = state.oauth
    if oauth is None:
        raise ApiError(
            503, "not_configured", "OAuth installs are off: set BLAMETRAIL_SENTRY_CLIENT_ID"
        )
    now = oauth.clock()
    signed = state.connect_states.sign(api.org, now, oauth.settings.connect_ttl_s)
    url = f"{api.settings.public_ingest_url.rstrip('/')}/integrations/sentry/connect?state={signed}"
    expires = datetime.fromtimestamp(now + oauth.settings.connect_ttl_s, UTC)
    return ConnectLinkOut(url=url, expires_at=expires)


@router.get(PATH + "/{id}", summary="Get a connection", responses=answers(404))
async def get_connection(api: Api, id: str) -> ConnectionOut:
    return out(ConnectionOut, _shown(api, await api.repo.connections.get(api.org, id)))


@router.patch(
    PATH + "/{id}", summary="Edit a connection, rotate secrets", responses=answers(400, 404, 409)
)
async def patch_connection(api: Admin, id: str, body: ConnectionPatch) -> ConnectionOut:
    row = await api.repo.connections.update(api.org, id, body.model_dump(exclude_unset=True))
    return out(ConnectionOut, _shown(api, row))


@router.delete(
    PATH + "/{id}",
    summary="Delete a connection (409 while it has mappings)",
    status_code=204,
    response_class=Response,
    responses=answers(404, 409),
)
async def delete_connection(api: Admin, id: str) -> Response:
    await api.repo.connections.delete(api.org, id)
    return Response(status_code=204)


@router.get(
    PATH + "/{id}/health",
    summary="A connection's health: last webhook, webhooks accepted and ignored (by reason) in"
    " the last 24 h, last enrichment error, token expiry and last refresh, webhook URL",
    response_model=ConnectionHealth,
    responses=answers(404),
)
async def get_connection_health(api: Api, id: str) -> Response:
    row = await api.repo.connections.get(api.org, id)
    body = await connection_health(api.repo.pool, api.org, row, api.identity.clock())
    return JSONResponse(plain({**body, "webhook_url": _shown(api, row)["webhook_url"]}))


@router.get(
    PATH + "/{id}/sentry-projects",
    summary="The Sentry projects of a connection, as Sentry lists them (502 when it cannot)",
    responses=answers(404, 502),
)
async def list_sentry_projects(api: Api, id: str) -> SentryProjects:
    row = await api.repo.connections.get(api.org, id)
    if row["auth_token_enc"] is None:
        raise ApiError(502, "sentry", "this connection has no token to ask Sentry with")
    token = api.repo.box.decrypt(row["auth_token_enc"])
    try:
        items = await list_projects(
            api.request.app.state.sentry_http, row["api_base_url"], row["sentry_org_slug"], token
        )
    except SentryError as exc:
        raise ApiError(502, "sentry", exc.detail) from None
    return SentryProjects(items=[SentryProject(**p) for p in items])
