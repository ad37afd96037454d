"""The stand-in's issue state: issues whose status can change, search, detail and merges.

:class:`IssueStore` is plain Python (no HTTP): tests and the other stand-in modules (the issue
update of the write-back) call it directly. Issues are Sentry's issue serializer dicts
(camelCase, as ``data.issue`` of an issue webhook and the issue detail endpoint), keyed by
``(org, issue id)``.

* Every org starts with the fixture issue (``5912345678``, project ``checkout-api``), and, while
  ``template`` is on (the stand-in's default, as for latest events), an id asked for by detail or
  by an ``issue.id:[...]`` search that the store has never seen exists: the fixture issue under
  that id, unresolved (so tests that push webhooks with any id find a Sentry issue behind them).
* :meth:`IssueStore.set_status` changes an issue behind BlameTrail's back: no webhook is sent.
* :meth:`IssueStore.merge` merges issues into a primary as Sentry does (PROTOCOL §5.1): the
  merged ids are gone from search, and detail of a merged id answers with the primary (whose
  ``id`` differs from the one asked for).

HTTP (registered in ``app.py``, route names for faults ``issue_detail``/``issue_search``):

* ``GET /api/0/organizations/{org}/issues/{issue_id}/``: detail (merged id -> the primary).
* ``GET /api/0/organizations/{org}/issues/?query=&project=&cursor=&limit=``: search with
  ``is:unresolved|resolved|ignored|archived``, ``issue.id:[1,2]`` (or ``issue.id:1``),
  ``firstSeen:>ISO`` / ``>=`` / ``<`` / ``<=`` and ``lastSeen:`` alike; ``project`` repeated
  numeric ids (``-1``: all); newest ``firstSeen`` first; at most 100 per page; cursor pagination
  through ``Link`` (``rel="next"; results="true"; cursor="0:100:0"``). No ``query`` parameter
  means ``is:unresolved`` (Sentry's default); an unknown search term is a 400.
* ``POST /_stub/issues`` ``{"org", "project_slug", "project_id"?, "id"?, "title"?,
  "first_seen"?, "status"?}`` creates an issue (no webhook) and answers it;
  ``POST /_stub/issues/{org}/{issue_id}/status`` ``{"status", "substatus"?, "statusDetails"?}``
  changes one behind our back; ``POST /_stub/issues/{org}/merge`` ``{"into", "ids": [...]}``.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson
from blametrail_common.testing import fixture_bytes
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from blametrail_sentry_stub.state import StubState, Token

__all__ = ["MAX_PER_PAGE", "IssueStore", "SearchError", "control_routes", "parse_query"]

MAX_PER_PAGE = 100
FIXTURE_ISSUE: dict[str, Any] = orjson.loads(fixture_bytes("webhooks/issue.created.json"))["data"][
    "issue"
]
_WEBHOOK_ONLY = ("url", "web_url", "project_url")  # detail and search do not carry these
_SUBSTATUS = {"unresolved": "ongoing", "resolved": None, "ignored": "archived_until_escalating"}
_STATUSES = ("unresolved", "resolved", "ignored")


class SearchError(ValueError):
    """A search query the stand-in (like Sentry) refuses: answered 400 with this message."""


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SearchError(f"Invalid date: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Query:
    """A parsed search: every part given must hold."""

    statuses: frozenset[str] | None = None
    ids: frozenset[str] | None = None
    seen: tuple[tuple[str, str, datetime], ...] = ()  # (field, op, time)

    def matches(self, issue: dict[str, Any]) -> bool:
        if self.statuses is not None and issue["status"] not in self.statuses:
            return False
        if self.ids is not None and issue["id"] not in self.ids:
            return False
        for name, op, at in self.seen:
            value = _parse_time(issue[name])
            ok = {
                ">": value > at,
                ">=": value >= at,
                "<": value < at,
                "<=": value <= at,
            }[op]
            if not ok:
                return False
        return True


_TERM = re.compile(r"(?P<key>[A-Za-z.]+):(?P<value>\[[^\]]*\]|\S+)")
_SEEN = re.compile(r"(?P<op>>=|<=|>|<)(?P<at>\S+)")


def parse_query(query: str) -> Query:
    """Sentry's search syntax, the part the stand-in answers; :class:`SearchError` otherwise."""
    statuses: set[str] | None = None
    ids: set[str] | None = None
    seen: list[tuple[str, str, datetime]] = []
    pos = 0
    for found in _TERM.finditer(query):
        if query[pos : found.start()].strip():
            raise SearchError(f"Invalid search query: free text {query[pos : found.start()]!r}")
        pos = found.end()
        key, value = found["key"], found["value"]
        if key == "is":
            wanted = "ignored" if value == "archived" else value
            if wanted not in _STATUSES:
                raise SearchError(f"Invalid value for is: {value!r}")
            statuses = (statuses or set()) | {wanted}
        elif key == "issue.id":
            listed = value[1:-1].split(",") if value.startswith("[") else [value]
            given = {v.strip() for v in listed if v.strip()}
            if not all(v.isdigit() for v in given):
                raise SearchError(f"Invalid issue.id: {value!r}")
            ids = given if ids is None else ids & given
        elif key in ("firstSeen", "lastSeen"):
            op = _SEEN.fullmatch(value)
            if op is None:
                raise SearchError(f"Invalid {key} filter: {value!r}")
            seen.append((key, op["op"], _parse_time(op["at"])))
        else:
            raise SearchError(f"Invalid search query: unknown key {key!r}")
    if query[pos:].strip():
        raise SearchError(f"Invalid search query: free text {query[pos:]!r}")
    return Query(
        frozenset(statuses) if statuses is not None else None,
        frozenset(ids) if ids is not None else None,
        tuple(seen),
    )


@dataclass
class IssueStore:
    """Every issue of every org the stand-in knows, with merges. Mutate it through its methods."""

    template: bool = True
    issues: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    redirects: dict[tuple[str, str], str] = field(default_factory=dict)  # merged -> primary
    deleted: set[tuple[str, str]] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(7_000_000_000))

    # -- reading ------------------------------------------------------------------------------
    def get(self, org: str, issue_id: str) -> dict[str, Any] | None:
        """The issue detail for ``issue_id`` (the primary's, for a merged id), or None."""
        primary = self._resolve(org, issue_id)
        if primary is None:
            return None
        return copy.deepcopy(self.issues[(org, primary)])

    def search(
        self, org: str, query: Query, projects: set[str] | None = None
    ) -> list[dict[str, Any]]:
        """Every matching issue (merged ones are gone), newest ``firstSeen`` first."""
        return [copy.deepcopy(i) for i in self._matching(org, query, projects)]

    def _matching(
        self, org: str, query: Query, projects: set[str] | None = None
    ) -> list[dict[str, Any]]:
        self._seed(org)
        if self.template and query.ids:
            for issue_id in query.ids:
                self._resolve(org, issue_id)  # materialize templated ids
        # an issue is stored under its own id: a search by ids looks them up instead of reading
        # every issue (the reconciler's sweep pages through every tracked incident by ids, and
        # after a storm the store holds a hundred thousand issues)
        candidates = (
            (self.issues.get((org, i)) for i in query.ids)
            if query.ids is not None
            else (issue for (o, _), issue in self.issues.items() if o == org)
        )
        found = [
            issue
            for issue in candidates
            if issue is not None
            and query.matches(issue)
            and (projects is None or issue["project"]["id"] in projects)
        ]
        found.sort(key=lambda i: (i["firstSeen"], i["id"]), reverse=True)
        return found

    # -- changing -----------------------------------------------------------------------------
    def create(
        self,
        org: str,
        project_slug: str,
        *,
        project_id: str | None = None,
        issue_id: str | None = None,
        title: str | None = None,
        first_seen: datetime | None = None,
        status: str = "unresolved",
        level: str = "error",
    ) -> dict[str, Any]:
        """A new issue (no webhook is sent: Sentry's ``issue.created`` was "lost")."""
        self._seed(org)
        issue_id = issue_id or str(next(self._ids))
        at = first_seen or datetime.now(UTC)
        issue = self._template(issue_id)
        issue.update(
            title=title or issue["title"],
            level=level,
            firstSeen=_iso(at),
            lastSeen=_iso(at),
            count="1",
            userCount=1,
            shortId=f"{project_slug.upper()}-{int(issue_id) % 10_000:X}",
            project={**issue["project"], "slug": project_slug, "name": project_slug},
        )
        if project_id is not None:
            issue["project"]["id"] = project_id
        self.issues[(org, issue_id)] = issue
        self.deleted.discard((org, issue_id))
        self.redirects.pop((org, issue_id), None)
        if status != "unresolved":
            self.set_status(org, issue_id, status)
        return copy.deepcopy(issue)

    def set_status(
        self,
        org: str,
        issue_id: str,
        status: str,
        *,
        substatus: str | None = None,
        status_details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Change an issue's status behind our back (no webhook). ``KeyError`` if unknown."""
        if status not in _STATUSES:
            raise ValueError(f"unknown status {status!r} (one of {', '.join(_STATUSES)})")
        return self.update(
            org,
            issue_id,
            {
                "status": status,
                "substatus": substatus if substatus is not None else _SUBSTATUS[status],
                "statusDetails": status_details or {},
            },
        )

    def update(self, org: str, issue_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply serializer fields (``status``, ``substatus``, ``statusDetails``,
        ``assignedTo``, ``lastSeen``...) to an issue; the issue after. ``KeyError`` if unknown."""
        primary = self._resolve(org, issue_id)
        if primary is None:
            raise KeyError(f"issue {issue_id} of {org} does not exist")
        issue = self.issues[(org, primary)]
        issue.update(copy.deepcopy(changes))
        return copy.deepcopy(issue)

    def merge(self, org: str, ids: list[str], into: str) -> dict[str, Any]:
        """Merge ``ids`` into ``into`` as Sentry does: counts add up, the merged issues are
        deleted, a redirect leads each merged id (and ids merged into it before) to ``into``."""
        primary_id = self._resolve(org, into)
        if primary_id is None:
            raise KeyError(f"issue {into} of {org} does not exist")
        primary = self.issues[(org, primary_id)]
        for issue_id in ids:
            merged_id = self._resolve(org, issue_id)
            if merged_id is None or merged_id == primary_id:
                continue
            merged = self.issues.pop((org, merged_id))
            primary["count"] = str(int(primary["count"]) + int(merged["count"]))
            primary["firstSeen"] = min(primary["firstSeen"], merged["firstSeen"])
            primary["lastSeen"] = max(primary["lastSeen"], merged["lastSeen"])
            self.redirects[(org, merged_id)] = primary_id
            for key, target in list(self.redirects.items()):
                if target == merged_id:
                    self.redirects[key] = primary_id
        return copy.deepcopy(primary)

    def delete(self, org: str, issue_id: str) -> None:
        """The issue is gone for good (detail 404, not found by search)."""
        self.issues.pop((org, issue_id), None)
        self.deleted.add((org, issue_id))

    # -- inside -------------------------------------------------------------------------------
    def _seed(self, org: str) -> None:
        key = (org, FIXTURE_ISSUE["id"])
        if key not in self.issues and key not in self.deleted and key not in self.redirects:
            self.issues[key] = self._template(FIXTURE_ISSUE["id"])

    def _template(self, issue_id: str) -> dict[str, Any]:
        issue = {k: v for k, v in copy.deepcopy(FIXTURE_ISSUE).items() if k not in _WEBHOOK_ONLY}
        issue.update(id=issue_id, status="unresolved", substatus="ongoing", statusDetails={})
        issue["firstSeen"] = _iso(_parse_time(issue["firstSeen"]))
        issue["lastSeen"] = _iso(_parse_time(issue["lastSeen"]))
        return issue

    def _resolve(self, org: str, issue_id: str) -> str | None:
        self._seed(org)
        key = (org, issue_id)
        if key in self.redirects:  # a merged id: its primary, unless that is gone too
            target = self.redirects[key]
            return target if (org, target) in self.issues else None
        if key in self.issues:
            return issue_id
        if self.template and key not in self.deleted and issue_id.isdigit():
            self.issues[key] = self._template(issue_id)
            return issue_id
        return None


# -- HTTP ---------------------------------------------------------------------------------------
def _denied(request: Request, token: Token | None) -> Response | None:
    if token is not None and token.org_slug != request.path_params["org"]:
        return JSONResponse({"detail": "You do not have permission to perform this action."}, 403)
    return None


async def issue_detail(request: Request, state: StubState, token: Token | None) -> Response:
    denied = _denied(request, token)
    if denied is not None:
        return denied
    found = state.issue_store.get(request.path_params["org"], request.path_params["issue_id"])
    if found is None:
        return JSONResponse({"detail": "The requested resource does not exist"}, 404)
    return JSONResponse(found)


def _cursor(value: str | None) -> int:
    if not value:
        return 0
    parts = value.split(":")
    if len(parts) != 3 or not all(p.lstrip("-").isdigit() for p in parts):
        raise SearchError(f"Invalid cursor parameter: {value!r}")
    return max(int(parts[1]), 0)


async def issue_search(request: Request, state: StubState, token: Token | None) -> Response:
    denied = _denied(request, token)
    if denied is not None:
        return denied
    params = request.query_params
    projects = {p for p in params.getlist("project") if p}
    try:
        query = parse_query(params.get("query", "is:unresolved"))
        offset = _cursor(params.get("cursor"))
        limit = int(params.get("limit", str(MAX_PER_PAGE)))
    except (SearchError, ValueError) as exc:
        return JSONResponse({"detail": str(exc)}, 400)
    limit = min(max(limit, 1), MAX_PER_PAGE)
    every = state.issue_store._matching(  # copied a page at a time, not whole
        request.path_params["org"], query, None if not projects or "-1" in projects else projects
    )
    page = copy.deepcopy(every[offset : offset + limit])
    base = str(request.url.remove_query_params("cursor"))

    def link(rel: str, at: int, results: bool) -> str:
        cursor = f"0:{at}:{1 if rel == 'previous' else 0}"
        sep = "&" if "?" in base else "?"
        return (
            f'<{base}{sep}{urlencode({"cursor": cursor})}>; rel="{rel}"; '
            f'results="{"true" if results else "false"}"; cursor="{cursor}"'
        )

    more = offset + limit < len(every)
    header = ", ".join(
        (link("previous", max(offset - limit, 0), offset > 0), link("next", offset + limit, more))
    )
    return JSONResponse(page, headers={"Link": header})


def control_routes(state: StubState) -> list[Route]:
    """``/_stub/issues...``: create, change behind our back, merge (no webhook for any)."""
    store = state.issue_store

    async def create(request: Request) -> Response:
        body = orjson.loads(await request.body())
        at = body.get("first_seen")
        issue = store.create(
            body["org"],
            body["project_slug"],
            project_id=body.get("project_id"),
            issue_id=body.get("id"),
            title=body.get("title"),
            first_seen=_parse_time(at) if at else None,
            status=body.get("status", "unresolved"),
        )
        return JSONResponse(issue, 201)

    async def status(request: Request) -> Response:
        body = orjson.loads(await request.body())
        try:
            issue = store.set_status(
                request.path_params["org"],
                request.path_params["issue_id"],
                body["status"],
                substatus=body.get("substatus"),
                status_details=body.get("statusDetails"),
            )
        except KeyError as exc:
            return JSONResponse({"detail": str(exc)}, 404)
        except ValueError as exc:
            return JSONResponse({"detail": str(exc)}, 400)
        return JSONResponse(issue)

    async def merge(request: Request) -> Response:
        body = orjson.loads(await request.body())
        try:
            issue = store.merge(request.path_params["org"], list(body["ids"]), str(body["into"]))
        except KeyError as exc:
            return JSONResponse({"detail": str(exc)}, 404)
        return JSONResponse(issue)

    return [
        Route("/_stub/issues", create, methods=["POST"]),
        Route("/_stub/issues/{org}/merge", merge, methods=["POST"]),
        Route("/_stub/issues/{org}/{issue_id}/status", status, methods=["POST"]),
    ]
