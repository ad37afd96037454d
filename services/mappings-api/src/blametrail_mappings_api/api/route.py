"""How every ``/api/v1`` request is taken, in this order (as before FastAPI):

1. the credential (``Authorization: Bearer``, an API key or a session token): none, or not a
   live one, is a 401 before anything else is looked at ("Session expired" for a session that
   is over); then the role: a route that takes :data:`~.deps.Admin` answers a member 403; then
   a NUL character in a query or path parameter is a 422 (Postgres cannot take one);
2. the body, for routes that take one (a parameter named ``body``, a pydantic model): read as
   JSON whatever its ``Content-Type`` says (``curl -d`` sends form-encoded), 400 ``bad_json``
   when it is not JSON, 422 with every field in error when the model refuses it;
3. then FastAPI's own handling: dependencies, parameters, the endpoint, the response model.

:class:`PublicApiRoute` skips 1 (signing in). :class:`ApiRoute` does 1 and 2 (FastAPI would decode the body before any dependency runs, and
say so in its own words); FastAPI then decodes the checked body again, which cannot fail. GET
routes also answer HEAD, as Starlette's routes do.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, get_type_hints

import orjson
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Message, Receive, Scope, Send

from blametrail_mappings_api.api.deps import require_admin
from blametrail_mappings_api.api.problems import ApiError, answers, field_problems, unauthorized
from blametrail_mappings_api.auth import Principal

__all__ = ["ADMIN_ONLY", "ApiRoute", "PublicApiRoute", "admin_only", "check_body"]

ADMIN_ONLY = ApiError(403, "forbidden", "This needs the admin role")


def admin_only(dependant: Dependant) -> bool:
    """Whether a route (its dependency tree) takes :data:`~.deps.Admin`."""
    return any(d.call is require_admin or admin_only(d) for d in dependant.dependencies)


class ApiRoute(APIRoute):
    """The route class of every API router (``APIRouter(route_class=ApiRoute)``)."""

    authenticated = True

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        if admin_only(self.dependant):  # documented on every admin route
            self.responses = {**self.responses, **answers(403)}

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        model = _body_model(self.endpoint)
        admin = admin_only(self.dependant)

        async def handler(request: Request) -> Response:
            if self.authenticated:
                found = await request.app.state.identity.authenticate(
                    request.headers.get("authorization")
                )
                if not isinstance(found, Principal):
                    return unauthorized("Session expired" if found else None)
                if admin and not found.is_admin:
                    raise ADMIN_ONLY
                request.state.principal, request.state.org = found, found.org
            params = [*request.query_params.multi_items(), *request.path_params.items()]
            if nul := sorted({k for k, v in params if "\x00" in str(v)}):
                problems = [{"field": k, "message": "must not contain NUL characters"} for k in nul]
                raise ApiError(422, "validation", "request is invalid", problems)
            if model is not None:
                raw = await request.body()
                check_body(model, raw)
                request = _as_json(request, raw)
            return await handle(request)

        return handler

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is Match.PARTIAL and self._head_of_get(scope):
            return Match.FULL, child
        return match, child

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._head_of_get(scope):
            await self.app(scope, receive, send)
        else:
            await super().handle(scope, receive, send)

    def _head_of_get(self, scope: Scope) -> bool:
        return scope.get("method") == "HEAD" and "GET" in (self.methods or ())


class PublicApiRoute(ApiRoute):
    """A route that takes no credential (``POST /api/v1/sessions``: signing in)."""

    authenticated = False


def check_body(model: type[BaseModel], raw: bytes) -> None:
    """:class:`ApiError` 400 unless ``raw`` is JSON, 422 unless ``model`` accepts it."""
    try:
        data = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "bad_json", f"malformed JSON: {exc}") from None
    try:
        model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "validation", "request body is invalid", field_problems(exc)) from None


def _body_model(endpoint: Callable[..., Any]) -> type[BaseModel] | None:
    model = get_type_hints(endpoint).get("body")
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _as_json(request: Request, raw: bytes) -> Request:
    """The same request, its body ``raw`` again, declared ``application/json`` (FastAPI decodes
    only a body declared JSON)."""
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
    headers.append((b"content-type", b"application/json"))
    replayed = False

    async def receive() -> Message:
        nonlocal replayed
        if replayed:
            return await request.receive()
        replayed = True
        return {"type": "http.request", "body": raw, "more_body": False}

    return Request({**request.scope, "headers": headers}, receive)
