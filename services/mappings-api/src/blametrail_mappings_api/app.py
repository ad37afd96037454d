"""The control plane's ASGI app: FastAPI, with the REST API's routers (:mod:`.api`), whose routes
and pydantic models also give ``/openapi.json``, so the two cannot drift; beside them, plain
Starlette routes for what is not the REST API: health, the Sentry UI-component callbacks
(:mod:`.sentry.ui_components`), the browser's side of an OAuth install (:mod:`.sentry.oauth_routes`)
and the ``/docs`` page.

Errors map to 400 (malformed JSON), 401 (no/bad key), 404 (unknown or another tenant's id), 409
(conflict, with what it conflicts with) and 422 (field-level validation): :mod:`.api.problems`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from blametrail_common.health import ReadinessCheck, health_routes
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.applications import Starlette

from blametrail_mappings_api.api import (
    api_keys,
    audit,
    connections,
    deploys,
    incident_actions,
    incidents,
    jobs,
    mappings,
    services,
    sessions,
    users,
)
from blametrail_mappings_api.api.docs import docs_route
from blametrail_mappings_api.api.problems import HANDLERS
from blametrail_mappings_api.identity import Clock, Identity, utcnow
from blametrail_mappings_api.passwords import Passwords
from blametrail_mappings_api.repository import Repository
from blametrail_mappings_api.sentry.oauth import OAuth
from blametrail_mappings_api.sentry.oauth_routes import oauth_routes
from blametrail_mappings_api.sentry.state import ConnectState
from blametrail_mappings_api.sentry.ui_components import ui_routes
from blametrail_mappings_api.settings import ApiSettings
from blametrail_mappings_api.store.read_model import ReadModel

__all__ = ["ENDPOINTS", "ROUTERS", "Endpoint", "create_app"]

ROUTERS = (
    sessions.public,
    sessions.router,
    users.router,
    api_keys.router,
    services.router,
    connections.router,
    mappings.router,
    incidents.router,
    incident_actions.router,
    deploys.router,
    audit.router,
    jobs.router,
)


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    summary: str


ENDPOINTS = tuple(
    Endpoint(method, r.path, r.summary or "")
    for router in ROUTERS
    for r in router.routes
    if isinstance(r, APIRoute)
    for method in sorted(r.methods or ())
)
"""Every REST endpoint (what ``/openapi.json`` lists)."""


def create_app(
    settings: ApiSettings,
    repo: Repository,
    checks: dict[str, ReadinessCheck],
    lifespan: Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]] | None = None,
    oauth: OAuth | None = None,
    clock: Clock = utcnow,
    passwords: Passwords | None = None,
    sentry_http: httpx.AsyncClient | None = None,
    verify_connections: bool = False,
) -> FastAPI:
    """The app. ``sentry_http`` asks Sentry (a connection's projects; a client of its own when
    not given); with ``verify_connections`` an internal connection is checked with one call to
    Sentry before it is saved (the composition root turns it on unless
    ``BLAMETRAIL_API_VERIFY_CONNECTIONS=false``)."""
    states = ConnectState(repo.box.mac_keys("sentry connect state"))
    app = FastAPI(
        title="BlameTrail control plane",
        version="1",
        openapi_url="/openapi.json",
        docs_url=None,  # our own /docs: no Swagger UI fetched from a CDN
        redoc_url=None,
        exception_handlers=HANDLERS,
        lifespan=lifespan,
        routes=[
            docs_route(),
            *health_routes(checks),
            *ui_routes(repo.pool, repo.box, settings.public_ingest_url, None, settings.proxies()),
            *oauth_routes(oauth, states, settings.public_ingest_url),
        ],
    )
    for router in ROUTERS:
        app.include_router(router)
    app.state.repo, app.state.settings, app.state.reads = repo, settings, ReadModel(repo.pool)
    app.state.oauth, app.state.connect_states = oauth, states
    app.state.identity = Identity(repo.pool, settings, clock, passwords)
    app.state.sentry_http = sentry_http or httpx.AsyncClient()
    app.state.verify_connections = app.state.sentry_http if verify_connections else None
    return app
