"""Users (admins manage them) and API keys (created and shown once, listed, revoked)."""

from __future__ import annotations

from typing import Any

from starlette.datastructures import FormData
from starlette.responses import Response
from starlette.routing import Route

from blametrail_web.api import ApiProblem
from blametrail_web.pages.common import all_items, first
from blametrail_web.web import Ctx, action, page, path_id

__all__ = ["routes"]

USERS, KEYS = "/org/users", "/org/api-keys"
ROLES = ("member", "admin")


async def _users(c: Ctx, status: int = 200, **extra: Any) -> Response:
    items = await all_items(c, "/api/v1/users")
    extra.setdefault("errors", {})
    extra.setdefault("values", {})
    return c.render("users.html", status, items=items, roles=ROLES, **extra)


@page
async def users(c: Ctx) -> Response:
    return await _users(c)


@action
async def create_user(c: Ctx, form: FormData) -> Response:
    values = {k: first(form, k) for k in ("email", "name", "role")}
    password = form.get("password")
    body = {**values, "password": password if isinstance(password, str) else ""}
    errors = {
        k: m
        for k, m in (
            ("email", "Enter the person's email address"),
            ("name", "Enter the person's name"),
            ("password", "Enter a first password for them"),
        )
        if not body[k]
    }
    if not errors:
        try:
            await c.api.post("/api/v1/users", body)
        except ApiProblem as exc:
            if exc.status not in (400, 409, 422):
                raise
            errors = exc.field_messages() or {"email": exc.message}
        else:
            c.say(f"{values['name']} can now sign in as {values['email']}.")
            return c.redirect(USERS)
    return await _users(c, 400, errors=errors, values=values)


@action
async def change_user(c: Ctx, form: FormData) -> Response:
    ident = path_id(c)
    body: dict[str, Any] = {}
    if role := first(form, "role"):
        body["role"] = role
    if disabled := first(form, "disabled"):
        body["disabled"] = disabled == "true"
    try:
        row = await c.api.patch(f"/api/v1/users/{ident}", body)
    except ApiProblem as exc:
        if exc.status not in (400, 409, 422):
            raise
        c.say(exc.message)
        return c.redirect(USERS)
    c.say(f"{row.get('name') or row.get('email')} updated.")
    return c.redirect(USERS)


async def _keys(c: Ctx, status: int = 200, **extra: Any) -> Response:
    items = await all_items(c, "/api/v1/api-keys")
    extra.setdefault("errors", {})
    extra.setdefault("values", {})
    extra.setdefault("created", None)
    return c.render("api_keys.html", status, items=items, roles=ROLES, **extra)


@page
async def api_keys(c: Ctx) -> Response:
    return await _keys(c)


@action
async def create_key(c: Ctx, form: FormData) -> Response:
    values = {"name": first(form, "name"), "role": first(form, "role") or "member"}
    errors: dict[str, str] = {}
    if not values["name"]:
        errors["name"] = "Name the key (what will use it)"
    if values["role"] not in ROLES:
        errors["role"] = "Choose member or admin"
    if errors:
        return await _keys(c, 400, errors=errors, values=values)
    try:
        created = await c.api.post("/api/v1/api-keys", values)
    except ApiProblem as exc:
        if exc.status not in (400, 409, 422):
            raise
        errors = exc.field_messages() or {"name": exc.message}
        return await _keys(c, 400, errors=errors, values=values)
    # Shown once, on this answer only (never put in a redirect or a cookie).
    return await _keys(c, 201, created=created)


@action
async def revoke_key(c: Ctx, form: FormData) -> Response:
    await c.api.delete(f"/api/v1/api-keys/{path_id(c)}")
    c.say("API key revoked: it no longer works.")
    return c.redirect(KEYS)


def routes() -> list[Route]:
    return [
        Route(USERS, users, methods=["GET"]),
        Route(USERS, create_user, methods=["POST"]),
        Route(USERS + "/{id}", change_user, methods=["POST"]),
        Route(KEYS, api_keys, methods=["GET"]),
        Route(KEYS, create_key, methods=["POST"]),
        Route(KEYS + "/{id}/revoke", revoke_key, methods=["POST"]),
    ]
