"""The control-plane REST API under ``/api/v1``. One table of endpoints yields both the routes
and the OpenAPI document, so the two cannot drift. Handlers only parse, call the repository and
shape the answer; errors map to 400 (malformed JSON), 401 (no/bad key), 404 (unknown or another
tenant's id), 409 (conflict, with what it conflicts with) and 422 (field-level validation).
"""

from __future__ import annotations

import contextlib
import html
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from blametrail_common.health import ReadinessCheck, health_routes
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from blametrail_mappings_api.errors import Conflict, Invalid, NotFound
from blametrail_mappings_api.oauth import ConnectState, OAuth, oauth_routes
from blametrail_mappings_api.readmodel import ReadModel
from blametrail_mappings_api.repository import Repository, Row
from blametrail_mappings_api.schemas import (
    ConnectionCreate,
    ConnectionOut,
    ConnectionPatch,
    ConnectLinkOut,
    DeployCreate,
    DeployOut,
    MappingCreate,
    MappingOut,
    MappingPatch,
    ServiceCreate,
    ServiceOut,
    ServicePatch,
)
from blametrail_mappings_api.sentry_ui import ui_routes
from blametrail_mappings_api.settings import ApiSettings

__all__ = ["create_app"]

Handler = Callable[["Ctx"], Awaitable[Response]]


@dataclass
class Ctx:
    request: Request
    org: str
    repo: Repository
    settings: ApiSettings
    reads: ReadModel

    def param(self, name: str) -> str:
        return str(self.request.path_params[name])

    async def body(self, model: type[BaseModel]) -> dict[str, Any]:
        raw = await self.request.body()
        try:
            data = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError as exc:
            raise _Http(400, "bad_json", f"malformed JSON: {exc}") from None
        try:
            return model.model_validate(data).model_dump(
                exclude_unset=model.__name__.endswith("Patch")
            )
        except ValidationError as exc:
            raise _Http(422, "validation", "request body is invalid", _fields(exc)) from None

    def limit(self) -> int:
        raw = self.request.query_params.get("limit", "50")
        if not raw.isdigit() or not 1 <= int(raw) <= 200:
            raise Invalid("limit", "limit must be an integer from 1 to 200")
        return int(raw)


class _Http(Exception):
    def __init__(
        self, status: int, error: str, message: str, fields: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.fields = status, error, message, fields


def _fields(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
        for e in exc.errors()
    ]


def _json(model: type[BaseModel], row: Row | dict[str, Any], status: int = 200) -> Response:
    data = {
        k: str(v) if k.endswith("id") and v is not None and not isinstance(v, str) else v
        for k, v in row.items()
    }
    return Response(
        model.model_validate(data).model_dump_json(), status, media_type="application/json"
    )


def _page(
    model: type[BaseModel],
    page: tuple[list[Row], str | None],
    shape: Callable[[Row], dict[str, Any]],
) -> Response:
    rows, cursor = page
    items = [orjson.loads(model.model_validate(_ids(shape(r))).model_dump_json()) for r in rows]
    return JSONResponse({"items": items, "next_cursor": cursor})


def _ids(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: str(v) if k.endswith("id") and v is not None and not isinstance(v, str) else v
        for k, v in row.items()
    }


# -- handlers ----------------------------------------------------------------------------------
async def list_services(c: Ctx) -> Response:
    return _page(
        ServiceOut,
        await c.repo.list_services(c.org, c.request.query_params.get("cursor"), c.limit()),
        dict,
    )


async def create_service(c: Ctx) -> Response:
    return _json(ServiceOut, await c.repo.create_service(c.org, await c.body(ServiceCreate)), 201)


async def get_service(c: Ctx) -> Response:
    return _json(ServiceOut, await c.repo.get_service(c.org, c.param("id")))


async def patch_service(c: Ctx) -> Response:
    return _json(
        ServiceOut, await c.repo.update_service(c.org, c.param("id"), await c.body(ServicePatch))
    )


async def delete_service(c: Ctx) -> Response:
    await c.repo.delete_service(c.org, c.param("id"))
    return Response(status_code=204)


def _connection(c: Ctx) -> Callable[[Row], dict[str, Any]]:
    def shape(row: Row) -> dict[str, Any]:
        return {
            **{
                k: row[k]
                for k in (
                    "id",
                    "mode",
                    "sentry_org_slug",
                    "api_base_url",
                    "enabled",
                    "installation_uuid",
                    "token_expires_at",
                    "created_at",
                    "updated_at",
                )
            },
            "webhook_url": f"{c.settings.public_ingest_url.rstrip('/')}/webhooks/sentry"
            + ("" if row["mode"] == "oauth" else f"/{row['id']}"),
            "client_secrets_set": len(row["client_secrets_enc"]),
            "auth_token_set": row["auth_token_enc"] is not None,
        }

    return shape


async def list_connections(c: Ctx) -> Response:
    page = await c.repo.list_connections(c.org, c.request.query_params.get("cursor"), c.limit())
    return _page(ConnectionOut, page, _connection(c))


async def create_connection(c: Ctx) -> Response:
    return _json(
        ConnectionOut,
        _connection(c)(await c.repo.create_connection(c.org, await c.body(ConnectionCreate))),
        201,
    )


async def get_connection(c: Ctx) -> Response:
    return _json(ConnectionOut, _connection(c)(await c.repo.get_connection(c.org, c.param("id"))))


async def patch_connection(c: Ctx) -> Response:
    row = await c.repo.update_connection(c.org, c.param("id"), await c.body(ConnectionPatch))
    return _json(ConnectionOut, _connection(c)(row))


async def create_connect_link(c: Ctx) -> Response:
    oauth: OAuth | None = c.request.app.state.oauth
    if oauth is None:
        raise _Http(
            503, "not_configured", "OAuth installs are off: set BLAMETRAIL_SENTRY_CLIENT_ID"
        )
    now = oauth.clock()
    state = c.request.app.state.connect_states.sign(c.org, now, oauth.settings.connect_ttl_s)
    url = f"{c.settings.public_ingest_url.rstrip('/')}/integrations/sentry/connect?state={state}"
    expires = datetime.fromtimestamp(now + oauth.settings.connect_ttl_s, UTC)
    return _json(ConnectLinkOut, {"url": url, "expires_at": expires}, 201)


async def delete_connection(c: Ctx) -> Response:
    await c.repo.delete_connection(c.org, c.param("id"))
    return Response(status_code=204)


def _mapping(row: Row) -> dict[str, Any]:
    return {
        k: row[k]
        for k in (
            "id",
            "connection_id",
            "sentry_project_slug",
            "sentry_project_id",
            "service_id",
            "active",
            "created_at",
            "updated_at",
        )
    }


async def list_mappings(c: Ctx) -> Response:
    q = c.request.query_params
    active = q.get("active")
    if active not in (None, "true", "false"):
        raise Invalid("active", "active must be true or false")
    page = await c.repo.list_mappings(
        c.org,
        q.get("cursor"),
        c.limit(),
        q.get("service_id"),
        None if active is None else active == "true",
        q.get("connection_id"),
    )
    return _page(MappingOut, page, _mapping)


async def create_mapping(c: Ctx) -> Response:
    return _json(
        MappingOut, _mapping(await c.repo.create_mapping(c.org, await c.body(MappingCreate))), 201
    )


async def get_mapping(c: Ctx) -> Response:
    return _json(MappingOut, _mapping(await c.repo.get_mapping(c.org, c.param("id"))))


async def patch_mapping(c: Ctx) -> Response:
    return _json(
        MappingOut,
        _mapping(await c.repo.update_mapping(c.org, c.param("id"), await c.body(MappingPatch))),
    )


async def delete_mapping(c: Ctx) -> Response:
    await c.repo.delete_mapping(c.org, c.param("id"))
    return Response(status_code=204)


def _plain(value: Any) -> Any:
    """JSON-ready: ids and times as strings (orjson does the rest)."""
    return orjson.loads(orjson.dumps(value, default=str))


def _incident_summary(row: Row) -> dict[str, Any]:
    keys = (
        "incident_id",
        "service_id",
        "source",
        "status",
        "severity",
        "title",
        "culprit",
        "assignee",
        "first_seen",
        "last_seen",
        "event_count",
        "opened_at",
        "resolved_at",
        "updated_at",
    )
    sentry = row["sentry"] or {}
    link = {
        k: sentry.get(k)
        for k in ("issue_id", "short_id", "web_url", "project_slug", "metric_alert_id")
    }
    return {**{k: row[k] for k in keys}, "sentry": link}


async def list_incidents(c: Ctx) -> Response:
    q = c.request.query_params
    filters = {k: q.get(k) for k in ("service", "status", "severity", "source", "since")}
    rows, cursor = await c.reads.incidents(c.org, filters, q.get("cursor"), c.limit())
    return JSONResponse(
        {"items": _plain([_incident_summary(r) for r in rows]), "next_cursor": cursor}
    )


async def get_incident(c: Ctx) -> Response:
    found = await c.reads.incident(c.org, c.param("id"))
    enrichment = found["enrichment"]
    body = {
        **_incident_summary(found),
        "sentry": found["sentry"],
        "timeline": [
            {
                "event_id": t["event_id"],
                "type": t["event_type"],
                "occurred_at": t["occurred_at"],
                "payload": t["payload"],
            }
            for t in found["timeline"]
        ],
        "enrichment": None
        if enrichment is None
        else {
            "status": enrichment["status"],
            "reason": enrichment["reason"],
            "fetched_at": enrichment["fetched_at"],
            **(enrichment["record"] or {}),
        },
        "sentry_links": found["links"],
        "suspects": None
        if found["suspects"] is None
        else {
            "computed_at": found["suspects"]["computed_at"],
            "candidates": found["suspects"]["candidates"],
            "ranked": found["suspects"]["suspects"],
        },
    }
    return JSONResponse(_plain(body))


def _deploy(row: Row) -> dict[str, Any]:
    return {k: row[k] for k in DeployOut.model_fields}


async def create_deploy(c: Ctx) -> Response:
    row, created = await c.repo.create_deploy(c.org, (await c.body(DeployCreate)))
    return _json(DeployOut, _deploy(row), 201 if created else 200)


async def list_deploys(c: Ctx) -> Response:
    q = c.request.query_params
    since = None
    if q.get("since"):
        try:
            since = datetime.fromisoformat(q["since"])
        except ValueError:
            raise Invalid("since", "since must be an ISO 8601 time") from None
        if since.tzinfo is None:
            raise Invalid("since", "since needs a time zone (e.g. Z)")
    page = await c.repo.list_deploys(c.org, q.get("cursor"), c.limit(), q.get("service"), since)
    return _page(DeployOut, page, _deploy)


async def list_audit(c: Ctx) -> Response:
    q = c.request.query_params
    filters = {k: q.get(k) for k in ("reason", "project", "since")}
    rows, cursor = await c.reads.audit(c.org, filters, q.get("cursor"), c.limit())
    return JSONResponse({"items": _plain(rows), "next_cursor": cursor})


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    paged: bool = False


SVC, CONN, MAP, DEP = (
    "/api/v1/services",
    "/api/v1/integrations/sentry/connections",
    "/api/v1/integrations/sentry/mappings",
    "/api/v1/deploys",
)
ENDPOINTS = (
    Endpoint("GET", SVC, list_services, "List services", None, ServiceOut, True),
    Endpoint("POST", SVC, create_service, "Create a service", ServiceCreate, ServiceOut),
    Endpoint("GET", SVC + "/{id}", get_service, "Get a service", None, ServiceOut),
    Endpoint("PATCH", SVC + "/{id}", patch_service, "Edit a service", ServicePatch, ServiceOut),
    Endpoint(
        "DELETE", SVC + "/{id}", delete_service, "Delete a service (409 while mappings target it)"
    ),
    Endpoint("GET", CONN, list_connections, "List Sentry connections", None, ConnectionOut, True),
    Endpoint(
        "POST",
        CONN,
        create_connection,
        "Connect a Sentry organization (internal integration)",
        ConnectionCreate,
        ConnectionOut,
    ),
    Endpoint(
        "POST",
        "/api/v1/integrations/sentry/connect",
        create_connect_link,
        "A link that installs the public Sentry app for this organization (OAuth)",
        None,
        ConnectLinkOut,
    ),
    Endpoint("GET", CONN + "/{id}", get_connection, "Get a connection", None, ConnectionOut),
    Endpoint(
        "PATCH",
        CONN + "/{id}",
        patch_connection,
        "Edit a connection, rotate secrets",
        ConnectionPatch,
        ConnectionOut,
    ),
    Endpoint(
        "DELETE",
        CONN + "/{id}",
        delete_connection,
        "Delete a connection (409 while it has mappings)",
    ),
    Endpoint(
        "GET",
        MAP,
        list_mappings,
        "List project mappings (filters: service_id, active, connection_id)",
        None,
        MappingOut,
        True,
    ),
    Endpoint(
        "POST", MAP, create_mapping, "Map a Sentry project to a service", MappingCreate, MappingOut
    ),
    Endpoint("GET", MAP + "/{id}", get_mapping, "Get a mapping", None, MappingOut),
    Endpoint(
        "PATCH",
        MAP + "/{id}",
        patch_mapping,
        "Edit a mapping (service, active)",
        MappingPatch,
        MappingOut,
    ),
    Endpoint("DELETE", MAP + "/{id}", delete_mapping, "Delete a mapping (permanent)"),
    Endpoint(
        "GET",
        "/api/v1/incidents",
        list_incidents,
        "List incidents, newest first (filters: service, status, severity, source, since)",
        paged=True,
    ),
    Endpoint(
        "GET",
        "/api/v1/incidents/{id}",
        get_incident,
        "An incident: state, Sentry link, timeline, enrichment (tags, stacktrace, breadcrumbs,"
        " user...) and suspect deploys ranked with each signal's contribution",
    ),
    Endpoint(
        "POST",
        DEP,
        create_deploy,
        "Record a deploy (201; 200 when re-posted)",
        DeployCreate,
        DeployOut,
    ),
    Endpoint(
        "GET", DEP, list_deploys, "List deploys (filters: service, since)", None, DeployOut, True
    ),
    Endpoint(
        "GET",
        "/api/v1/integrations/sentry/audit",
        list_audit,
        "Webhooks received but not turned into incidents (filters: reason, project, since)",
        paged=True,
    ),
)


def openapi(endpoints: tuple[Endpoint, ...] = ENDPOINTS) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``endpoints``."""
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {}
    for e in endpoints:
        op: dict[str, Any] = {"summary": e.summary, "security": [{"bearer": []}], "responses": {}}
        if e.request:
            schemas[e.request.__name__] = e.request.model_json_schema()
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{e.request.__name__}"}
                    }
                },
            }
        if e.response or e.paged:
            ref: dict[str, Any] = {"type": "object"}
            if e.response:
                schemas[e.response.__name__] = e.response.model_json_schema()
                ref = {"$ref": f"#/components/schemas/{e.response.__name__}"}
            if e.paged:
                ref = {
                    "type": "object",
                    "properties": {
                        "items": {"type": "array", "items": ref},
                        "next_cursor": {"type": ["string", "null"]},
                    },
                }
            ok = "201" if e.method == "POST" else "200"
            op["responses"][ok] = {
                "description": "OK",
                "content": {"application/json": {"schema": ref}},
            }
        elif e.method == "DELETE":
            op["responses"]["204"] = {"description": "Deleted"}
        else:
            op["responses"]["200"] = {
                "description": "OK",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        for code, text in (
            ("400", "Malformed JSON"),
            ("401", "Missing or invalid API key"),
            ("404", "Unknown id"),
            ("409", "Conflict"),
            ("422", "Validation error"),
        ):
            op["responses"][code] = {"description": text}
        paths.setdefault(e.path, {})[e.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "BlameTrail control plane", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _docs_page(doc: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td><code>{m.upper()}</code></td><td><code>{html.escape(p)}</code></td>"
        f"<td>{html.escape(op['summary'])}</td></tr>"
        for p, ops in doc["paths"].items()
        for m, op in ops.items()
    )
    schemas = "".join(
        f"<h3>{html.escape(n)}</h3><pre>{html.escape(orjson.dumps(s, option=orjson.OPT_INDENT_2).decode())}</pre>"
        for n, s in doc["components"]["schemas"].items()
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{doc['info']['title']}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:.2em .8em}pre{background:#f4f4f4;padding:1em}</style>"
        f"</head><body><h1>{doc['info']['title']}</h1><p>Authenticate with <code>Authorization: Bearer &lt;key&gt;</code>"
        f" (<code>blametrail apikey create --org SLUG</code>). Machine-readable: <a href='/openapi.json'>/openapi.json</a>.</p>"
        f"<table>{rows}</table><h2>Schemas</h2>{schemas}</body></html>"
    )


def create_app(
    settings: ApiSettings,
    repo: Repository,
    checks: dict[str, ReadinessCheck],
    lifespan: Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]] | None = None,
    oauth: OAuth | None = None,
) -> Starlette:
    doc = openapi()
    reads = ReadModel(repo.pool)

    def route(e: Endpoint) -> Route:
        async def endpoint(request: Request) -> Response:
            org = await repo.org_for_key(request.headers.get("authorization"))
            if org is None:
                return JSONResponse(
                    {"error": "unauthorized", "message": "missing or invalid API key"},
                    401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
            try:
                return await e.handler(Ctx(request, org, repo, settings, reads))
            except _Http as h:
                body: dict[str, Any] = {"error": h.error, "message": h.message}
                if h.fields:
                    body["fields"] = h.fields
                return JSONResponse(body, h.status)
            except Invalid as inv:
                return JSONResponse(
                    {
                        "error": "validation",
                        "message": str(inv),
                        "fields": [{"field": inv.field, "message": str(inv)}],
                    },
                    422,
                )
            except NotFound as nf:
                return JSONResponse({"error": "not_found", "message": str(nf)}, 404)
            except Conflict as cf:
                return JSONResponse(
                    {
                        "error": "conflict",
                        "message": str(cf),
                        "existing": orjson.loads(orjson.dumps(cf.existing, default=str)),
                    },
                    409,
                )

        return Route(e.path, endpoint, methods=[e.method], name=f"{e.method} {e.path}")

    async def openapi_json(_: Request) -> Response:
        return JSONResponse(doc)

    async def docs(_: Request) -> Response:
        return HTMLResponse(_docs_page(doc))

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": "http", "message": exc.detail}, exc.status_code)

    routes: list[BaseRoute] = [route(e) for e in ENDPOINTS]
    routes += [Route("/openapi.json", openapi_json), Route("/docs", docs), *health_routes(checks)]
    routes += ui_routes(repo.pool, repo.box, settings.public_ingest_url)
    states = ConnectState(repo.box.mac_keys("sentry connect state"))
    routes += oauth_routes(oauth, states, settings.public_ingest_url)
    app = Starlette(
        routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan
    )
    app.state.oauth, app.state.connect_states = oauth, states
    return app
