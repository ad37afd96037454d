"""Project Mappings: the table (filters), Add Mapping (the Sentry project picked from the
connection's projects as Sentry lists them, or typed), the active toggle, Edit (service only),
Delete behind a confirmation."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.datastructures import FormData
from starlette.responses import Response
from starlette.routing import Route

from blametrail_web.api import ApiProblem, ApiUnavailable
from blametrail_web.pages.common import all_items, first
from blametrail_web.web import Ctx, action, page, path_id, uuid_or_none

__all__ = ["routes"]

BASE = "/org/integrations/sentry/mappings"
API = "/api/v1/integrations/sentry/mappings"
CONNECTIONS = "/api/v1/integrations/sentry/connections"


async def _context(c: Ctx) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    connections, services = await asyncio.gather(
        all_items(c, CONNECTIONS), all_items(c, "/api/v1/services")
    )
    return connections, services


@page
async def mappings(c: Ctx) -> Response:
    q = c.request.query_params
    chosen = {k: q[k] for k in ("connection_id", "service_id", "active") if q.get(k)}
    (connections, services), listed = await asyncio.gather(
        _context(c), c.api.get(API, limit=200, cursor=q.get("cursor") or None, **chosen)
    )
    return c.render(
        "mappings.html",
        items=listed["items"],
        next_cursor=listed.get("next_cursor"),
        chosen=chosen,
        connections=connections,
        services=services,
        service_names={s["id"]: s["name"] for s in services},
        connection_names={x["id"]: x["sentry_org_slug"] for x in connections},
    )


async def _sentry_projects(c: Ctx, connection_id: str) -> tuple[list[dict[str, Any]], str | None]:
    """The connection's projects as Sentry lists them, or why they cannot be had (then the
    person types the slug)."""
    if not connection_id:
        return [], None
    ident = uuid_or_none(connection_id)
    if ident is None:
        return [], "No such connection: choose one of the list."
    try:
        got = await c.api.get(f"{CONNECTIONS}/{ident}/sentry-projects")
    except ApiProblem as exc:
        if exc.status in (401, 403):
            raise
        return [], f"Sentry's project list could not be had ({exc.message}): type the slug."
    except ApiUnavailable:
        return [], "Sentry's project list could not be had: type the slug."
    return list(got.get("items") or []), None


async def _new_form(
    c: Ctx, values: dict[str, str], errors: dict[str, str], status: int = 200, **extra: Any
) -> Response:
    connections, services = await _context(c)
    if not values.get("connection_id") and connections:
        values["connection_id"] = connections[0]["id"]
    projects, projects_error = await _sentry_projects(c, values.get("connection_id", ""))
    return c.render(
        "mapping_new.html",
        status,
        values=values,
        errors=errors,
        connections=connections,
        services=services,
        projects=projects,
        projects_error=projects_error,
        **extra,
    )


@page
async def new_mapping(c: Ctx) -> Response:
    q = c.request.query_params
    values = {
        "connection_id": q.get("connection_id", ""),
        "sentry_project_slug": q.get("project", ""),
        "service_id": q.get("service_id", ""),
        "active": "true",
    }
    return await _new_form(c, values, {})


@action
async def create_mapping(c: Ctx, form: FormData) -> Response:
    values = {
        k: first(form, k) for k in ("connection_id", "sentry_project_slug", "service_id", "active")
    }
    typed = first(form, "typed_slug")
    if typed:
        values["sentry_project_slug"] = typed
    errors: dict[str, str] = {}
    if not values["sentry_project_slug"]:
        errors["sentry_project_slug"] = "Select or enter the Sentry project slug"
    if not values["service_id"]:
        errors["service_id"] = "Select the BlameTrail service"
    if not values["connection_id"]:
        errors["connection_id"] = "Connect a Sentry organization first"
    existing = None
    if not errors:
        body: dict[str, Any] = {
            "connection_id": values["connection_id"],
            "sentry_project_slug": values["sentry_project_slug"],
            "service_id": values["service_id"],
            "active": values["active"] != "false",
        }
        try:
            await c.api.post(API, body)
        except ApiProblem as exc:
            if exc.status == 409 and isinstance(exc.existing, dict):
                existing = exc.existing
                errors["sentry_project_slug"] = (
                    "Each Sentry project maps to one service only: this one is already mapped."
                )
            elif exc.status in (400, 409, 422):
                errors.update(exc.field_messages() or {"sentry_project_slug": exc.message})
            else:
                raise
        else:
            c.say(f"Mapping for {values['sentry_project_slug']} saved.")
            return c.redirect(BASE)
    names: dict[str, str] = {}
    if existing is not None:
        services = await all_items(c, "/api/v1/services")
        names = {s["id"]: s["name"] for s in services}
    return await _new_form(c, values, errors, 400, existing=existing, service_names=names)


@action
async def set_active(c: Ctx, form: FormData) -> Response:
    ident = path_id(c)
    active = first(form, "active") == "true"
    row = await c.api.patch(f"{API}/{ident}", {"active": active})
    state = "active" if active else "inactive: its webhooks are received but not processed"
    c.say(f"Mapping for {row['sentry_project_slug']} is now {state}.")
    return c.redirect(BASE)


@page
async def edit_mapping(c: Ctx) -> Response:
    ident = path_id(c)
    row, services = await asyncio.gather(
        c.api.get(f"{API}/{ident}"), all_items(c, "/api/v1/services")
    )
    return c.render("mapping_edit.html", m=row, services=services, errors={})


@action
async def save_mapping(c: Ctx, form: FormData) -> Response:
    ident = path_id(c)
    service_id = first(form, "service_id")
    errors: dict[str, str] = {}
    if not service_id:
        errors["service_id"] = "Select the BlameTrail service"
    else:
        try:
            row = await c.api.patch(f"{API}/{ident}", {"service_id": service_id})
        except ApiProblem as exc:
            if exc.status not in (400, 409, 422):
                raise
            errors.update(exc.field_messages() or {"service_id": exc.message})
        else:
            c.say(
                f"Mapping for {row['sentry_project_slug']} saved. Existing incidents stay on "
                "their service; new webhooks go to the new one."
            )
            return c.redirect(BASE)
    row, services = await asyncio.gather(
        c.api.get(f"{API}/{ident}"), all_items(c, "/api/v1/services")
    )
    return c.render("mapping_edit.html", 400, m=row, services=services, errors=errors)


@page
async def confirm_delete(c: Ctx) -> Response:
    ident = path_id(c)
    row, services = await asyncio.gather(
        c.api.get(f"{API}/{ident}"), all_items(c, "/api/v1/services")
    )
    names = {s["id"]: s["name"] for s in services}
    return c.render("mapping_delete.html", m=row, service_names=names)


@action
async def delete_mapping(c: Ctx, form: FormData) -> Response:
    ident = path_id(c)
    row = await c.api.get(f"{API}/{ident}")
    await c.api.delete(f"{API}/{ident}")
    c.say(
        f"Mapping for {row['sentry_project_slug']} deleted: its webhooks are ignored until a "
        "new mapping is created."
    )
    return c.redirect(BASE)


def routes() -> list[Route]:
    return [
        Route(BASE, mappings, methods=["GET"]),
        Route(BASE + "/new", new_mapping, methods=["GET"]),
        Route(BASE + "/new", create_mapping, methods=["POST"]),
        Route(BASE + "/{id}/active", set_active, methods=["POST"]),
        Route(BASE + "/{id}/edit", edit_mapping, methods=["GET"]),
        Route(BASE + "/{id}/edit", save_mapping, methods=["POST"]),
        Route(BASE + "/{id}/delete", confirm_delete, methods=["GET"]),
        Route(BASE + "/{id}/delete", delete_mapping, methods=["POST"]),
    ]
