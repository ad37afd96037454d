"""The API's error answers: their bodies (``{"error", "message"[, "fields" | "existing"]}``), the
models that document them in ``/openapi.json``, and the exception handlers that write them.

- 400 ``bad_json``: the body is not JSON;
- 401 ``unauthorized``: no API key or session, or not a live one (with ``WWW-Authenticate:
  Bearer``); "Session expired" for a session that is over; "Wrong email or password" at sign-in;
- 403 ``forbidden``: "This needs the admin role" (a member's call to an admin route);
- 404 ``not_found``: an unknown id, or another organization's;
- 409 ``conflict``: with ``existing``, what the request conflicts with;
- 422 ``validation``: with ``fields``, each field in error and why;
- 429 ``throttled``: too many failed sign-ins (with ``Retry-After``, seconds);
- 502 ``sentry``: Sentry could not be asked, or refused (its error in ``message``);
- 503 ``not_configured``: a feature this deployment has not set up; ``busy``: every password
  hashing slot and queue place is taken (``Retry-After``);
- any other HTTP error (unknown path, method not allowed): ``{"error": "http", "message"}``.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from blametrail_mappings_api.errors import Conflict, Invalid, NotFound
from blametrail_mappings_api.passwords import Busy

__all__ = [
    "HANDLERS",
    "ApiError",
    "ConflictProblem",
    "FieldProblem",
    "Problem",
    "ValidationProblem",
    "answers",
    "field_problems",
    "unauthorized",
]


class Problem(BaseModel):
    error: str
    message: str


class FieldProblem(BaseModel):
    field: str
    """The field's path (``changed_paths.0``); ``body`` for the body as a whole."""
    message: str


class ValidationProblem(Problem):
    fields: list[FieldProblem]


class ConflictProblem(Problem):
    existing: Any
    """What the request conflicts with (the existing row, or the names in the way)."""


class ApiError(Exception):
    """An answer with ``status`` and the body ``{error, message[, fields]}``."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        fields: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.fields = status, error, message, fields
        self.headers = headers


_ANSWERS: dict[int, tuple[type[BaseModel], str]] = {
    400: (Problem, "Malformed JSON"),
    401: (Problem, "Missing or invalid API key or session, or the session expired"),
    403: (Problem, "This needs the admin role"),
    404: (Problem, "Unknown id (or another organization's)"),
    409: (ConflictProblem, "Conflict"),
    422: (ValidationProblem, "Validation error (body, query or path parameter)"),
    429: (Problem, "Too many failed sign-ins (Retry-After: seconds)"),
    502: (Problem, "Sentry could not be asked, or refused"),
    503: (Problem, "Not configured, or too many password checks at once (Retry-After: seconds)"),
}


def busy(exc: Busy) -> ApiError:
    """503 ``busy`` for a password check refused because every slot and queue place is taken."""
    return ApiError(
        503,
        "busy",
        f"Too many sign-ins at once: try again in {exc.retry_after_s} seconds",
        headers={"Retry-After": str(exc.retry_after_s)},
    )


def answers(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for ``statuses``, plus 401 and 422 that every route can answer."""
    return {
        s: {"model": _ANSWERS[s][0], "description": _ANSWERS[s][1]}
        for s in sorted({401, 422, *statuses})
    }


def field_problems(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
        for e in exc.errors()
    ]


def unauthorized(message: str | None = None) -> Response:
    return JSONResponse(
        {"error": "unauthorized", "message": message or "missing or invalid API key"},
        401,
        headers={"WWW-Authenticate": "Bearer"},
    )


async def _api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    body: dict[str, Any] = {"error": exc.error, "message": exc.message}
    if exc.fields:
        body["fields"] = exc.fields
    return JSONResponse(body, exc.status, headers=exc.headers)


async def _invalid(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, Invalid)
    return JSONResponse(
        {
            "error": "validation",
            "message": str(exc),
            "fields": [{"field": exc.field, "message": str(exc)}],
        },
        422,
    )


async def _not_found(_: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "not_found", "message": str(exc)}, 404)


async def _conflict(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, Conflict)
    existing = orjson.loads(orjson.dumps(exc.existing, default=str))
    return JSONResponse({"error": "conflict", "message": str(exc), "existing": existing}, 409)


async def _request_invalid(_: Request, exc: Exception) -> Response:
    """FastAPI's own validation (our routes check bodies first, so this is a backstop): in our
    shape rather than FastAPI's ``{"detail": [...]}``."""
    assert isinstance(exc, RequestValidationError)
    fields = [
        {
            "field": ".".join(str(p) for p in e["loc"][1:]) or str(e["loc"][0]),
            "message": e["msg"],
        }
        for e in exc.errors()
    ]
    return JSONResponse(
        {"error": "validation", "message": "request is invalid", "fields": fields}, 422
    )


async def _http(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": "http", "message": exc.detail}, exc.status_code)


HANDLERS: dict[Any, Any] = {
    ApiError: _api_error,
    Invalid: _invalid,
    NotFound: _not_found,
    Conflict: _conflict,
    RequestValidationError: _request_invalid,
    HTTPException: _http,
}
"""The app's exception handlers (``FastAPI(exception_handlers=HANDLERS)``)."""
