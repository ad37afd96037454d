"""The REST API, as the pages use it: one :class:`Api` per request, acting with the browser's
session token. Every answer that is not a success raises :class:`ApiProblem` with the API's own
``{error, message[, fields | existing]}`` (the pages turn it into a message)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
from prometheus_client import Histogram

__all__ = ["API_SECONDS", "Api", "ApiProblem", "ApiUnavailable"]

API_SECONDS = Histogram(
    "blametrail_web_api_seconds", "REST API calls made by the web, by outcome", ["outcome"]
)


class ApiProblem(Exception):
    def __init__(self, status: int, body: dict[str, Any], retry_after: str | None = None) -> None:
        self.status = status
        self.error = str(body.get("error", "http"))
        self.message = str(body.get("message") or body.get("detail") or f"HTTP {status}")
        self.fields: list[dict[str, Any]] = list(body.get("fields") or [])
        self.existing: Any = body.get("existing")
        self.retry_after = retry_after
        super().__init__(f"{status} {self.error}: {self.message}")

    def field_messages(self) -> dict[str, str]:
        """``{field: message}``, the body's own fields first (``sentry_project_slug`` from
        ``body.sentry_project_slug``)."""
        out: dict[str, str] = {}
        for f in self.fields:
            name = str(f.get("field", "body")).removeprefix("body.")
            out.setdefault(name, str(f.get("message", "")))
        return out


class ApiUnavailable(Exception):
    """The API did not answer (down, timed out)."""


class Api:
    def __init__(
        self,
        http: httpx.AsyncClient,
        token: str | None,
        forwarded_for: str | None = None,
    ) -> None:
        self._http = http
        self._headers: dict[str, str] = {}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        if forwarded_for:
            self._headers["X-Forwarded-For"] = forwarded_for

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
    ) -> Any:
        clean = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        began = time.perf_counter()
        try:
            resp = await self._http.request(
                method, path, params=clean, json=json, headers=self._headers
            )
        except httpx.HTTPError as exc:
            API_SECONDS.labels("unavailable").observe(time.perf_counter() - began)
            raise ApiUnavailable(f"{type(exc).__name__} calling {method} {path}") from None
        API_SECONDS.labels(str(resp.status_code)).observe(time.perf_counter() - began)
        if resp.status_code == 204:
            return None
        if resp.status_code >= 400:
            try:
                body = orjson.loads(resp.content)
            except ValueError:
                body = {}
            if not isinstance(body, dict):
                body = {}
            raise ApiProblem(resp.status_code, body, resp.headers.get("retry-after"))
        return orjson.loads(resp.content)  # a page's whole list: orjson, not httpx's json

    async def get(self, path: str, **params: Any) -> Any:
        return await self.call("GET", path, params=params)

    async def post(self, path: str, body: Any = None) -> Any:
        return await self.call("POST", path, json=body if body is not None else {})

    async def patch(self, path: str, body: Any) -> Any:
        return await self.call("PATCH", path, json=body)

    async def delete(self, path: str) -> Any:
        return await self.call("DELETE", path)
