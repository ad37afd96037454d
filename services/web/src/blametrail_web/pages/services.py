"""Services: list, create, rename, delete (refused with a message while mappings target it)."""

from __future__ import annotations

import re

from starlette.datastructures import FormData
from starlette.responses import Response
from starlette.routing import Route

from blametrail_web.api import ApiProblem
from blametrail_web.pages.common import all_items, first
from blametrail_web.web import Ctx, action, page, path_id

__all__ = ["routes", "slug_for"]

BASE = "/org/services"
API = "/api/v1/services"


def slug_for(name: str) -> str:
    """A slug from a name (``Payments API`` -> ``payments-api``), as the API accepts."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:100] or "service"


async def _list(c: Ctx, status: int = 200, **extra: object) -> Response:
    items = await all_items(c, API)
    extra.setdefault("errors", {})
    extra.setdefault("values", {})
    return c.render("services.html", status, items=items, **extra)


@page
async def services(c: Ctx) -> Response:
    return await _list(c)


@action
async def create_service(c: Ctx, form: FormData) -> Response:
    name, slug = first(form, "name"), first(form, "slug")
    values = {"name": name, "slug": slug}
    if not name:
        return await _list(c, 400, errors={"name": "Enter the service's name"}, values=values)
    try:
        await c.api.post(API, {"name": name, "slug": slug or slug_for(name)})
    except ApiProblem as exc:
        if exc.status not in (400, 409, 422):
            raise
        errors = exc.field_messages() or {"name": exc.message}
        if exc.status == 409:
            errors = {"name": f"A service with this name or slug exists already ({exc.message})"}
        return await _list(c, 400, errors=errors, values=values)
    c.say(f"Service {name} created.")
    return c.redirect(BASE)


@page
async def edit_service(c: Ctx) -> Response:
    row = await c.api.get(f"{API}/{path_id(c)}")
    return c.render("service_edit.html", s=row, errors={})


@action
async def save_service(c: Ctx, form: FormData) -> Response:
    ident = path_id(c)
    name = first(form, "name")
    try:
        if not name:
            raise ApiProblem(
                422,
                {
                    "message": "Enter the service's name",
                    "fields": [{"field": "name", "message": "Enter the service's name"}],
                },
            )
        await c.api.patch(f"{API}/{ident}", {"name": name})
    except ApiProblem as exc:
        if exc.status not in (400, 409, 422):
            raise
        row = await c.api.get(f"{API}/{ident}")
        return c.render(
            "service_edit.html", 400, s=row, errors=exc.field_messages() or {"name": exc.message}
        )
    c.say(f"Service renamed to {name}.")
    return c.redirect(BASE)


@page
async def confirm_delete(c: Ctx) -> Response:
    row = await c.api.get(f"{API}/{path_id(c)}")
    return c.render("service_delete.html", s=row, refused=None)


@action
async def delete_service(c: Ctx, form: FormData) -> Response:
    ident = path_id(c)
    row = await c.api.get(f"{API}/{ident}")
    try:
        await c.api.delete(f"{API}/{ident}")
    except ApiProblem as exc:
        if exc.status != 409:
            raise
        targets = [m.get("sentry_project_slug") for m in exc.existing or [] if isinstance(m, dict)]
        return c.render("service_delete.html", 409, s=row, refused=targets)
    c.say(f"Service {row['name']} deleted.")
    return c.redirect(BASE)


def routes() -> list[Route]:
    return [
        Route(BASE, services, methods=["GET"]),
        Route(BASE, create_service, methods=["POST"]),
        Route(BASE + "/{id}/edit", edit_service, methods=["GET"]),
        Route(BASE + "/{id}/edit", save_service, methods=["POST"]),
        Route(BASE + "/{id}/delete", confirm_delete, methods=["GET"]),
        Route(BASE + "/{id}/delete", delete_service, methods=["POST"]),
    ]
