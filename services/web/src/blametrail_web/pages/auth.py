"""Sign in (through the API's sessions), sign out, sign out everywhere."""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from blametrail_web.api import ApiProblem, ApiUnavailable
from blametrail_web.pages.common import first
from blametrail_web.web import Ctx, Web, action, page

__all__ = ["routes"]


def _local(target: str) -> str:
    """Only a path of this site (no ``//host`` nor scheme): no open redirect."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/incidents"


async def signin_form(request: Request) -> Response:
    web: Web = request.app.state.web
    c = Ctx(web, request)
    if c.token:
        return c.redirect(_local(request.query_params.get("next", "/incidents")))
    return c.render(
        "signin.html", next=_local(request.query_params.get("next", "/incidents")), errors={}
    )


@action
async def signin(c: Ctx, form: FormData) -> Response:
    email, password, target = first(form, "email"), form.get("password"), first(form, "next")
    errors: dict[str, str] = {}
    if not email:
        errors["email"] = "Enter your email address"
    if not isinstance(password, str) or not password:
        errors["password"] = "Enter your password"  # noqa: S105 - a message
    if not errors:
        try:
            got = await c.api.post("/api/v1/sessions", {"email": email, "password": password})
        except ApiProblem as exc:
            if exc.status == 429:
                wait = f" Try again in {exc.retry_after} seconds." if exc.retry_after else ""
                errors["email"] = "Too many sign-in attempts." + wait
            elif exc.status in (400, 401, 422):
                errors["email"] = "Wrong email or password"
            else:
                errors["email"] = exc.message
        except ApiUnavailable:
            errors["email"] = "BlameTrail is unavailable: the API did not answer. Try again soon."
        else:
            user = got.get("user") or {}
            who = {k: user.get(k) for k in ("id", "email", "name", "role", "org")}
            return c.sign_in(c.redirect(_local(target or "/incidents")), got["token"], who)
    return c.render("signin.html", 400, next=_local(target), errors=errors, email=email)


@action
async def signout(c: Ctx, form: FormData) -> Response:
    everywhere = first(form, "everywhere") == "1"
    try:
        await c.api.delete("/api/v1/sessions" if everywhere else "/api/v1/sessions/current")
    except ApiProblem as exc:
        if exc.status != 401:  # already ended: signed out all the same
            raise
    c.say("Signed out everywhere." if everywhere else "Signed out.")
    return c.sign_out(c.redirect("/signin"))


@page
async def home(c: Ctx) -> Response:
    return c.redirect("/incidents")


def routes() -> list[Route]:
    return [
        Route("/", home, methods=["GET"]),
        Route("/signin", signin_form, methods=["GET"]),
        Route("/signin", signin, methods=["POST"]),
        Route("/signout", signout, methods=["POST"]),
    ]
