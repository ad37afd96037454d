"""Sentry's side of a connection, asked with the connection's own token: its projects
(``GET /api/0/organizations/{org}/projects/``, every page), and the one call that checks an
internal integration before it is saved (the first page of the same list).

Sentry's answers are attacker-controlled text: an error's detail is bounded here and shown by
the page escaped; a project's id, slug and name are bounded too.
"""

from __future__ import annotations

from typing import Any

import httpx

__all__ = ["SentryError", "check_connection", "list_projects"]

DETAIL_MAX = 300
MAX_PAGES = 50  # 5,000 projects


class SentryError(Exception):
    """Sentry refused (``status`` a 4xx) or could not be asked (``status`` ``None``: a timeout, a
    reset, a 5xx); ``detail`` is what it said, bounded."""

    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail[:DETAIL_MAX]

    @property
    def refused(self) -> bool:
        return self.status is not None and 400 <= self.status < 500 and self.status != 429


def _url(base: str, org: str) -> str:
    return f"{base.rstrip('/')}/api/0/organizations/{org}/projects/"


async def _page(
    http: httpx.AsyncClient, url: str, token: str, params: dict[str, str], timeout_s: float
) -> httpx.Response:
    try:
        resp = await http.get(
            url, params=params, headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s
        )
    except httpx.HTTPError as exc:
        raise SentryError(None, f"Sentry could not be reached: {type(exc).__name__}") from None
    if resp.status_code != 200:
        raise SentryError(resp.status_code, f"Sentry answered {resp.status_code}: {_detail(resp)}")
    return resp


def _detail(resp: httpx.Response) -> str:
    try:
        doc = resp.json()
    except ValueError:
        return resp.text[:DETAIL_MAX] or resp.reason_phrase
    detail = doc.get("detail") if isinstance(doc, dict) else None
    return str(detail)[:DETAIL_MAX] if detail is not None else resp.text[:DETAIL_MAX]


def _project(doc: Any) -> dict[str, str] | None:
    if not isinstance(doc, dict) or not doc.get("slug"):
        return None
    return {
        "id": str(doc.get("id", ""))[:40],
        "slug": str(doc["slug"])[:100],
        "name": str(doc.get("name") or doc["slug"])[:200],
    }


async def list_projects(
    http: httpx.AsyncClient, base: str, org: str, token: str, timeout_s: float = 10.0
) -> list[dict[str, str]]:
    """Every project Sentry lists for ``org`` (following ``Link`` ``rel="next"`` while it says
    ``results="true"``), sorted by slug; :class:`SentryError` when it cannot be had."""
    found: list[dict[str, str]] = []
    params: dict[str, str] = {}
    for _ in range(MAX_PAGES):
        resp = await _page(http, _url(base, org), token, params, timeout_s)
        try:
            docs = resp.json()
        except ValueError:
            raise SentryError(None, "Sentry's answer was not JSON") from None
        if not isinstance(docs, list):
            raise SentryError(None, "Sentry's answer was not a list of projects")
        found += [p for p in map(_project, docs) if p is not None]
        following = resp.links.get("next", {})
        if following.get("results") != "true" or not following.get("cursor"):
            break
        params = {"cursor": following["cursor"]}
    return sorted(found, key=lambda p: p["slug"])


async def check_connection(
    http: httpx.AsyncClient, base: str, org: str, token: str, timeout_s: float = 10.0
) -> None:
    """One call with an internal integration's token (the first page of its organization's
    projects): :class:`SentryError` unless Sentry accepts it."""
    await _page(http, _url(base, org), token, {"per_page": "1"}, timeout_s)
