"""Sentry UI-component callbacks (PROTOCOL §4), served under ``/sentry`` on the webhook host.

- ``POST /sentry/alert-rule-action``: validates the alert action's settings when a rule is saved.
- ``GET /sentry/options/services`` and ``GET /sentry/options/incidents``: async select options.
- ``POST /sentry/issue-link/create`` and ``POST /sentry/issue-link/link``: the issue-link component.

Each request is signed with ``Sentry-App-Signature`` (HMAC-SHA256 of the raw body; of ``""`` for
the GETs) under a client secret of the connection its ``installationId`` belongs to. A connection
bound to the installation (OAuth installs) is checked with its own secrets plus the public app's;
an internal connection that never learnt its installation id is found by the secret that signed.
Every failure is a 4xx ``{"message": ...}``, which Sentry shows; every answer comes within
``deadline_s``, under Sentry's 1 s. SQL lives in :mod:`blametrail_mappings_api.ui_repository`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, get_args

import orjson
import psycopg
from blametrail_common import signature
from blametrail_common.crypto import SecretBox, SecretBoxError
from blametrail_common.events.incidents import Severity
from blametrail_common.settings import PREFIX, BaseBlametrailSettings
from pydantic import Field, SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from blametrail_mappings_api.repository import Pool, Row
from blametrail_mappings_api.ui_repository import IssueRef, Linked, UiRepository

__all__ = ["SentryUiSettings", "ui_routes"]

log = logging.getLogger(__name__)
SIGNATURE_HEADERS = ("sentry-app-signature", "sentry-hook-signature")
SEVERITIES: tuple[Severity, ...] = get_args(Severity)
MAX_BODY_BYTES = 64 * 1024


class SentryUiSettings(BaseBlametrailSettings):
    public_client_secrets: SecretStr = Field(
        default=SecretStr(""), validation_alias=f"{PREFIX}INGEST_PUBLIC_CLIENT_SECRETS"
    )
    """The public (OAuth) app's client secret(s), the very variable ingest reads."""
    incident_url: str = Field(default="", validation_alias=f"{PREFIX}API_INCIDENT_URL")
    """Link target shown in Sentry, ``{incident_id}`` replaced; default: the API's incident URL
    on ``BLAMETRAIL_PUBLIC_INGEST_URL``."""
    deadline_s: float = Field(default=0.8, validation_alias=f"{PREFIX}API_SENTRY_UI_DEADLINE_S")

    def public_secrets(self) -> list[str]:
        raw = self.public_client_secrets.get_secret_value()
        return [s.strip() for s in raw.split(",") if s.strip()]


class Refused(Exception):
    """An answer Sentry shows: ``status`` with ``{"message": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Call:
    """A verified UI-component request: its JSON (``{}`` for GETs) and who sent it."""

    request: Request
    doc: dict[str, Any]
    connection: Row

    @property
    def org(self) -> str:
        return str(self.connection["org_id"])


Handler = Callable[[Call], Awaitable[Response]]


def ui_routes(
    pool: Pool, box: SecretBox, public_base_url: str, settings: SentryUiSettings | None = None
) -> list[BaseRoute]:
    """The ``/sentry/...`` routes; ``public_base_url`` is where Sentry and people reach us."""
    cfg = settings or SentryUiSettings()
    repo = UiRepository(pool)
    url = cfg.incident_url or f"{public_base_url.rstrip('/')}/api/v1/incidents/{{incident_id}}"

    def link_answer(linked: Linked) -> Response:
        return JSONResponse(
            {
                "webUrl": url.replace("{incident_id}", linked.incident_id),
                "project": linked.service_slug,
                "identifier": linked.incident_id[:8],
            },
            201 if linked.created else 200,
        )

    async def alert_rule_action(call: Call) -> Response:
        settings = _alert_settings(call.doc)
        _severity(settings.get("severity"))
        service = settings.get("service")
        if not isinstance(service, str) or await repo.service(call.org, service) is None:
            raise Refused(400, f"Unknown service {_short(service)}: pick one of your services")
        env = settings.get("environment")
        if env not in (None, "") and (not isinstance(env, str) or len(env) > 64 or "\n" in env):
            raise Refused(400, "Environment must be a Sentry environment name (64 characters max)")
        return JSONResponse({"message": "ok"})

    async def service_options(call: Call) -> Response:
        rows = await repo.services(call.org, call.request.query_params.get("query"))
        options = [{"label": r["name"], "value": str(r["id"])} for r in rows]
        if len(options) == 1:
            options[0]["default"] = True
        return JSONResponse(options)

    async def incident_options(call: Call) -> Response:
        rows = await repo.open_incidents(call.org, call.request.query_params.get("query"))
        return JSONResponse(
            [
                {
                    "label": f"{r['service_slug'] or '?'}#{str(r['incident_id'])[:8]} "
                    f"[{r['severity']}] {r['title']}"[:200],
                    "value": str(r["incident_id"]),
                }
                for r in rows
            ]
        )

    async def create(call: Call) -> Response:
        fields, issue = _fields(call.doc), _issue(call.doc)
        service_id = fields.get("service")
        service = await repo.service(call.org, service_id) if isinstance(service_id, str) else None
        if service is None:
            raise Refused(400, f"Unknown service {_short(service_id)}: pick one of your services")
        severity = _severity(fields.get("severity") or "sev2")
        title = fields.get("title")
        title = title.strip()[:500] if isinstance(title, str) and title.strip() else None
        linked = await repo.create_incident(
            call.connection, service, issue, title or f"Sentry issue {issue.issue_id}", severity
        )
        return link_answer(linked)

    async def link(call: Call) -> Response:
        fields, issue = _fields(call.doc), _issue(call.doc)
        incident = fields.get("incident")
        if not isinstance(incident, str) or not incident:
            raise Refused(400, "Pick the BlameTrail incident to link")
        linked = await repo.link_incident(call.connection, incident, issue)
        if linked is None:
            raise Refused(404, "No such incident in your BlameTrail organization")
        return link_answer(linked)

    def route(path: str, method: str, handler: Handler) -> Route:
        async def endpoint(request: Request) -> Response:
            try:
                async with asyncio.timeout(cfg.deadline_s):
                    call = await _verified(request, repo, box, cfg.public_secrets())
                    return await handler(call)
            except Refused as r:
                return JSONResponse({"message": r.message}, r.status)
            except psycopg.Error as exc:  # PoolTimeout is one too
                log.warning(
                    "sentry ui call failed on Postgres", extra={"error": type(exc).__name__}
                )
                return JSONResponse({"message": "BlameTrail cannot answer now, try again"}, 503)
            except TimeoutError:
                log.warning("sentry ui call over its deadline", extra={"path": path})
                return JSONResponse({"message": "BlameTrail is busy, please try again"}, 503)

        return Route(path, endpoint, methods=[method], name=f"sentry-ui {method} {path}")

    return [
        route("/sentry/alert-rule-action", "POST", alert_rule_action),
        route("/sentry/options/services", "GET", service_options),
        route("/sentry/options/incidents", "GET", incident_options),
        route("/sentry/issue-link/create", "POST", create),
        route("/sentry/issue-link/link", "POST", link),
    ]


# -- verification ----------------------------------------------------------------------------
async def _verified(
    request: Request, repo: UiRepository, box: SecretBox, public: list[str]
) -> Call:
    values = [v for h in SIGNATURE_HEADERS for v in request.headers.getlist(h)]
    if not values:
        raise Refused(401, "Sentry-App-Signature header missing")
    if len(values) > 1:
        raise Refused(400, "more than one signature header")
    body = await _body(request)
    doc = _json(body) if request.method == "POST" else {}
    installation = doc.get("installationId") or request.query_params.get("installationId")
    if not isinstance(installation, str) or not installation:
        raise Refused(400, "installationId missing")
    connection = await _connection(repo, box, public, installation, body, values[0])
    return Call(request, doc, connection)


async def _connection(
    repo: UiRepository, box: SecretBox, public: list[str], installation: str, body: bytes, sig: str
) -> Row:
    if not signature.is_well_formed(sig):
        raise Refused(401, "Sentry-App-Signature is not a hex HMAC-SHA256")
    bound = await repo.connection_for_installation(installation)
    if bound is not None:
        secrets = _secrets(box, bound) + (public if bound["mode"] == "oauth" else [])
        if not signature.verify(body, sig, secrets):
            raise Refused(401, "Sentry-App-Signature does not match the body")
        return bound
    # Internal integrations: the webhook URL names the connection, UI calls only the
    # installation; the client secret is the app's own, so the one that verifies names it.
    matches = [
        c
        for c in await repo.unbound_internal_connections()
        if signature.verify(body, sig, _secrets(box, c))
    ]
    if not matches:
        raise Refused(404, f"Unknown installation {_short(installation)}")
    if len(matches) > 1:
        raise Refused(
            409, "This installation is connected to more than one BlameTrail organization"
        )
    return matches[0]


def _secrets(box: SecretBox, connection: Row) -> list[str]:
    out = []
    for enc in connection["client_secrets_enc"]:
        try:
            out.append(box.decrypt(enc))
        except SecretBoxError:
            log.error(
                "connection secret undecryptable", extra={"connection_id": str(connection["id"])}
            )
    return out


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise Refused(413, f"body over {MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise Refused(413, f"body over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# -- request shapes (PROTOCOL §4.1, §4.2) ----------------------------------------------------
def _json(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Refused(400, "body is not JSON") from None
    if not isinstance(doc, dict):
        raise Refused(400, "body must be a JSON object")
    return doc


def _alert_settings(doc: dict[str, Any]) -> dict[str, Any]:
    """``fields`` of an alert-rule-action save: a list of ``{name, value}``."""
    fields = doc.get("fields")
    if not isinstance(fields, list) or not all(isinstance(f, dict) for f in fields):
        raise Refused(400, "fields must be a list of {name, value}")
    return {f.get("name"): f.get("value") for f in fields}


def _short(value: Any) -> str:
    return repr(value)[:66]  # shown by Sentry: never a whole untrusted value


def _severity(value: Any) -> Severity:
    for severity in SEVERITIES:
        if value == severity:
            return severity
    raise Refused(400, f"Severity must be one of {', '.join(SEVERITIES)}")


def _fields(doc: dict[str, Any]) -> dict[str, Any]:
    """``fields`` of an issue-link call: an object of form values."""
    fields = doc.get("fields")
    if not isinstance(fields, dict):
        raise Refused(400, "fields must be an object")
    return fields


def _issue(doc: dict[str, Any]) -> IssueRef:
    issue_id, project = doc.get("issueId"), doc.get("project")
    if isinstance(issue_id, bool) or not isinstance(issue_id, int | str) or not str(issue_id):
        raise Refused(400, "issueId missing")
    project = project if isinstance(project, dict) else {}
    web_url, slug, pid = doc.get("webUrl"), project.get("slug"), project.get("id")
    return IssueRef(
        issue_id=str(issue_id),
        web_url=web_url if isinstance(web_url, str) else None,
        project_slug=slug if isinstance(slug, str) else None,
        project_id=str(pid) if isinstance(pid, int | str) and not isinstance(pid, bool) else None,
    )
