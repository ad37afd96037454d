"""``POST /api/v1/incidents/{id}/acknowledge|resolve|reopen|assign``: actions on an incident.

Any signed-in caller (member or admin) of the incident's organization; another organization's
incident is a 404. The action is recorded with who took it (the user, or the API key) and sent
as a command (``incident-commands``, through the outbox); the answer is ``202``: the incident's
state follows once the normalizer has folded the command (``GET /api/v1/incidents/{id}``).

A state that does not allow the action is a 409 naming the status (reopen an open incident,
acknowledge a resolved one, resolve a resolved one, assign to whom it is assigned already).
Retries: send an ``Idempotency-Key`` header; the same key on the same incident answers the first
answer again (``"replayed": true``) and changes nothing; the same key for another action is a
409. Without a key, the state check makes the same action twice one state change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from blametrail_common.events.incidents import ActionName, Actor, Assignee
from fastapi import APIRouter, Header
from pydantic import BaseModel, Field, model_validator
from starlette.responses import JSONResponse, Response

from blametrail_mappings_api.api.deps import Api
from blametrail_mappings_api.api.problems import answers
from blametrail_mappings_api.api.route import ApiRoute
from blametrail_mappings_api.api.shapes import plain
from blametrail_mappings_api.errors import Invalid, NotFound
from blametrail_mappings_api.schemas import _In
from blametrail_mappings_api.store.incident_actions import Accepted, IncidentActionStore

__all__ = ["STATE_ACTIONS", "ActionOut", "AssignBody", "router"]

router = APIRouter(prefix="/api/v1/incidents", tags=["incidents"], route_class=ApiRoute)
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Makes a retry safe: the same key on this incident gives the first answer",
    ),
]
MAX_TEXT = 200


class AssignBody(_In):
    """Exactly one of ``user_id`` (a BlameTrail user of this organization) or ``name`` (free
    text, e.g. a team or someone without an account)."""

    user_id: str | None = None
    name: Annotated[str | None, Field(min_length=1, max_length=MAX_TEXT)] = None

    @model_validator(mode="after")
    def _one(self) -> AssignBody:
        if (self.user_id is None) == (self.name is None or not self.name.strip()):
            raise ValueError("give exactly one of user_id or name")
        return self


class ActionOut(BaseModel):
    action_id: str
    incident_id: str
    action: str
    status: str
    """The incident's status after the action (an assignment keeps it)."""
    assignee: dict[str, Any] | None
    actor: dict[str, str]
    """Who acted: ``kind`` (``user`` or ``api_key``), ``id``, ``name``."""
    requested_at: str
    replayed: bool
    """True when this answers an earlier request with the same ``Idempotency-Key``."""


def _store(api: Api) -> IncidentActionStore:
    return IncidentActionStore(api.repo.pool)


def _actor(api: Api) -> Actor:
    p = api.principal
    return Actor(kind=p.kind, id=p.id, name=p.name)


def _key(value: str | None) -> str | None:
    if value is not None and not 1 <= len(value) <= MAX_TEXT:
        raise Invalid("Idempotency-Key", f"Idempotency-Key must be 1 to {MAX_TEXT} characters")
    if value is not None and "\x00" in value:
        raise Invalid("Idempotency-Key", "Idempotency-Key must not contain NUL")
    return value


def _answer(done: Accepted) -> Response:
    body = {
        "action_id": done.action_id,
        "incident_id": done.incident_id,
        "action": done.action,
        "status": done.status,
        "assignee": done.assignee,
        "actor": done.actor,
        "requested_at": done.requested_at,
        "replayed": done.replayed,
    }
    return JSONResponse(plain(body), status_code=202)


async def _act(
    api: Api, id: str, action: ActionName, key: str | None, to: Assignee | None = None
) -> Response:
    done = await _store(api).act(api.org, id, action, _actor(api), to=to, idempotency_key=_key(key))
    return _answer(done)


_ROUTE: dict[str, Any] = {
    "status_code": 202,
    "response_model": ActionOut,
    "responses": answers(404, 409, 422),
}
STATE_ACTIONS: dict[ActionName, str] = {
    "acknowledge": "Acknowledge an open incident (mirrored to Sentry as the substatus 'ongoing')",
    "resolve": "Resolve an incident (mirrored to Sentry when the connection writes back)",
    "reopen": "Reopen a resolved or muted incident",
}
"""The actions that only change the status (no body), with their OpenAPI summaries."""


def _state_action(action: ActionName) -> Callable[..., Awaitable[Response]]:
    async def endpoint(api: Api, id: str, idempotency_key: IdempotencyKey = None) -> Response:
        return await _act(api, id, action, idempotency_key)

    endpoint.__name__ = endpoint.__qualname__ = action  # the route's name, in its operationId
    return endpoint


for _action, _summary in STATE_ACTIONS.items():
    router.post(f"/{{id}}/{_action}", summary=_summary, **_ROUTE)(_state_action(_action))


@router.post(
    "/{id}/assign",
    summary="Assign an incident to a BlameTrail user (user_id) or to free text (name)",
    **_ROUTE,
)
async def assign(
    api: Api, id: str, body: AssignBody, idempotency_key: IdempotencyKey = None
) -> Response:
    if body.user_id is not None:
        try:
            user = await api.identity.users.get(api.org, body.user_id)
        except NotFound:
            raise Invalid("user_id", "no such user in this organization") from None
        to = Assignee(type="user", id=str(user["id"]), name=user["name"], email=user["email"])
    else:
        assert body.name is not None
        text = body.name.strip()
        to = Assignee(type="text", id=text, name=text)
    return await _act(api, id, "assign", idempotency_key, to)
