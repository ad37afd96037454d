"""The stand-in's issue update (PROTOCOL §5.1) and the webhooks Sentry sends for the change.

* ``PUT /api/0/organizations/{org}/issues/{issue_id}/`` with ``{"status": "resolved"}``,
  ``{"status": "unresolved", "substatus"?: "ongoing"}``, ``{"status": "ignored", ...}`` or
  ``{"assignedTo": ...}``, on :class:`~blametrail_sentry_stub.issues.IssueStore`. Needs
  ``event:write``: a token of an installed app (:class:`AppRegistry`) whose scopes lack it gets
  Sentry's 403; another organization's token gets 403; an unknown issue 404; a body Sentry would
  refuse 400. Faults and rate limits as every route (route name ``issue_update``). Answers the
  issue after the change.
* A change (a status that differs, an assignment that differs) fires the matching ``issue.*``
  webhook to **every app installed in the organization** (ours included), each signed with that
  app's client secret, with ``actor`` = ``{"type": "application", "id": <app uuid>, "name"}``
  for a change made with an app's token (a token of no registered app acts as a user). Sent
  in the background, as Sentry's tasks do, right after the answer. An update that changes nothing
  sends nothing.
* ``POST /_stub/apps`` ``{"org", "webhook_url", "client_secret", "token"?, "installation"?,
  "uuid"?, "name"?, "scopes"?}``: an app installed in ``org`` (its token is made or moved to its
  installation); answers ``{"uuid", "installation", "token"}``.
* ``POST /_stub/issues/{org}/{issue_id}/user-update`` ``{"status"?, "substatus"?,
  "assignedTo"?}``: a person changes the issue in Sentry's UI: applied, webhooks sent with a
  user actor.
* ``GET /_stub/issue-updates``: every update applied (API or user-update), oldest first
  (``{"org", "issue_id", "body", "actor", "at"}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from blametrail_common.signature import sign
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from blametrail_sentry_stub.state import StubState, Token

__all__ = ["ALL_SCOPES", "App", "AppRegistry", "control_routes", "issue_update", "planned_change"]

ALL_SCOPES = frozenset({"event:read", "event:write", "event:admin", "project:read", "org:read"})
_STATUSES = ("resolved", "unresolved", "ignored")
_FIELDS = frozenset({"status", "substatus", "statusDetails", "assignedTo"})
_DEFAULT_SUBSTATUS = {"unresolved": "ongoing", "resolved": None, "ignored": "archived_forever"}
_FORBIDDEN = {"detail": "You do not have permission to perform this action."}


@dataclass(frozen=True)
class App:
    """A Sentry app installed in one organization: where its webhooks go and how they are signed."""

    uuid: str
    name: str
    org: str
    installation: str
    webhook_url: str
    client_secret: str
    scopes: frozenset[str]

    def actor(self) -> dict[str, Any]:
        return {"type": "application", "id": self.uuid, "name": self.name}


@dataclass
class AppRegistry:
    """Installed apps by installation uuid, the updates made, and the webhooks in flight."""

    apps: dict[str, App] = field(default_factory=dict)
    updates: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)  # webhooks delivered (or tried)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def install(
        self,
        org: str,
        webhook_url: str,
        client_secret: str,
        *,
        installation: str | None = None,
        uuid: str | None = None,
        name: str = "BlameTrail",
        scopes: frozenset[str] = ALL_SCOPES,
    ) -> App:
        app = App(
            uuid or secrets.token_hex(16),
            name,
            org,
            installation or secrets.token_hex(16),
            webhook_url,
            client_secret,
            frozenset(scopes),
        )
        self.apps[app.installation] = app
        return app

    def in_org(self, org: str) -> list[App]:
        return [a for a in self.apps.values() if a.org == org]

    async def drain(self) -> None:
        """Wait for the webhooks in flight (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def planned_change(issue: dict[str, Any], body: Any) -> tuple[dict[str, Any], str | None]:
    """Pure: the serializer fields an update body sets, and the webhook action it fires
    (``None`` when it changes nothing). ``ValueError`` for a body Sentry would refuse."""
    if not isinstance(body, dict) or not body:
        raise ValueError("the body must be a JSON object naming what to change")
    unknown = set(body) - _FIELDS
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
    changes: dict[str, Any] = {}
    action = None
    if "status" in body:
        status = body["status"]
        if status not in _STATUSES:
            raise ValueError(f'"{status}" is not a valid choice.')
        substatus = body.get("substatus", _DEFAULT_SUBSTATUS[status])
        if status == "resolved" and substatus is not None:
            raise ValueError("a resolved issue has no substatus")
        changes.update(
            status=status, substatus=substatus, statusDetails=body.get("statusDetails") or {}
        )
        if status != issue.get("status"):
            action = status
    elif "substatus" in body:
        raise ValueError("substatus needs status")
    if "assignedTo" in body:
        changes["assignedTo"] = body["assignedTo"]
        if action is None and body["assignedTo"] != issue.get("assignedTo"):
            action = "assigned"
    return changes, action


def _registry(state: StubState) -> AppRegistry:
    registry: AppRegistry = state.apps
    return registry


def _apply(
    state: StubState, org: str, issue_id: str, body: Any, actor: dict[str, Any]
) -> tuple[dict[str, Any] | None, str | None]:
    """Apply an update; ``(issue after, webhook action)``; ``(None, _)`` for an unknown issue."""
    store = state.issue_store
    current = store.get(org, issue_id)
    if current is None:
        return None, None
    changes, action = planned_change(current, body)
    after = store.update(org, issue_id, changes)
    registry = _registry(state)
    registry.updates.append(
        {"org": org, "issue_id": after["id"], "body": body, "actor": actor, "at": state.now()}
    )
    if action is not None:
        task = asyncio.get_running_loop().create_task(_notify(state, org, after, action, actor))
        registry._tasks.add(task)
        task.add_done_callback(registry._tasks.discard)
    return after, action


async def _notify(
    state: StubState, org: str, issue: dict[str, Any], action: str, actor: dict[str, Any]
) -> None:
    """``issue.<action>`` to every app installed in ``org``, each signed with its own secret."""
    data: dict[str, Any] = {"issue": issue}
    if action == "resolved":
        data["resolution_type"] = "now"
    async with httpx.AsyncClient() as http:
        for app in _registry(state).in_org(org):
            body = orjson.dumps(
                {
                    "action": action,
                    "installation": {"uuid": app.installation},
                    "data": data,
                    "actor": actor,
                }
            )
            headers = {
                "Content-Type": "application/json",
                "Request-ID": secrets.token_hex(16),
                "Sentry-Hook-Resource": "issue",
                "Sentry-Hook-Timestamp": str(int(state.now())),
                "Sentry-Hook-Signature": sign(body, app.client_secret),
            }
            status = None
            with contextlib.suppress(httpx.HTTPError):  # no retries: an internal app's lot
                status = (
                    await http.post(app.webhook_url, content=body, headers=headers, timeout=5)
                ).status_code
            _registry(state).sent.append(
                {"app": app.uuid, "action": action, "issue_id": issue["id"], "status": status}
            )


async def issue_update(request: Request, state: StubState, token: Token | None) -> Response:
    """``PUT .../issues/{issue_id}/`` (registered in ``app.py`` under ``_guard``)."""
    org = request.path_params["org"]
    if token is not None and token.org_slug != org:
        return JSONResponse(_FORBIDDEN, 403)
    app = _registry(state).apps.get(token.installation or "") if token is not None else None
    if app is not None and "event:write" not in app.scopes:
        return JSONResponse(_FORBIDDEN, 403)
    actor = app.actor() if app is not None else {"type": "user", "id": 1, "name": "Stub User"}
    try:
        body = orjson.loads(await request.body())
        after, _ = _apply(state, org, request.path_params["issue_id"], body, actor)
    except (orjson.JSONDecodeError, ValueError) as exc:
        return JSONResponse({"detail": str(exc)}, 400)
    if after is None:
        return JSONResponse({"detail": "The requested resource does not exist"}, 404)
    return JSONResponse(after)


def control_routes(state: StubState) -> list[Route]:
    """``/_stub/apps``, ``/_stub/issues/{org}/{id}/user-update``, ``/_stub/issue-updates``."""
    from blametrail_sentry_stub.state import Token

    async def install(request: Request) -> Response:
        body = orjson.loads(await request.body())
        app = _registry(state).install(
            body["org"],
            body["webhook_url"],
            body["client_secret"],
            installation=body.get("installation"),
            uuid=body.get("uuid"),
            name=body.get("name", "BlameTrail"),
            scopes=frozenset(body.get("scopes", ALL_SCOPES)),
        )
        token = body.get("token") or secrets.token_hex(32)
        state.tokens[token] = Token(token, body["org"], installation=app.installation)
        return JSONResponse(
            {"uuid": app.uuid, "installation": app.installation, "token": token}, 201
        )

    async def user_update(request: Request) -> Response:
        user = {"type": "user", "id": 1, "name": "Stub User"}
        try:
            body = orjson.loads(await request.body())
            after, action = _apply(
                state, request.path_params["org"], request.path_params["issue_id"], body, user
            )
        except (orjson.JSONDecodeError, ValueError) as exc:
            return JSONResponse({"detail": str(exc)}, 400)
        if after is None:
            return JSONResponse({"detail": "The requested resource does not exist"}, 404)
        return JSONResponse({"issue": after, "webhook": action})

    async def updates(_: Request) -> Response:
        return JSONResponse(_registry(state).updates)

    return [
        Route("/_stub/apps", install, methods=["POST"]),
        Route("/_stub/issues/{org}/{issue_id}/user-update", user_update, methods=["POST"]),
        Route("/_stub/issue-updates", updates),
    ]
