"""Who is calling (PROTOCOL §4): a UI-component request is signed with ``Sentry-App-Signature``
(HMAC-SHA256 of the raw body; of ``""`` for the GETs) under a client secret of the connection its
``installationId`` belongs to. A connection bound to the installation (OAuth installs) is checked
with its own secrets plus the public app's; an internal connection that never learnt its
installation id is found by the secret that signed. Also the request shapes (PROTOCOL §4.1,
§4.2). Every refusal is a :class:`Refused`: a 4xx ``{"message": ...}``, which Sentry shows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, get_args

import orjson
from blametrail_common import signature
from blametrail_common.crypto import SecretBox, SecretBoxError
from blametrail_common.events.incidents import Severity
from starlette.requests import Request

from blametrail_mappings_api.store.db import Row
from blametrail_mappings_api.store.ui import IssueRef, UiRepository

__all__ = [
    "MAX_BODY_BYTES",
    "SEVERITIES",
    "Call",
    "Refused",
    "alert_settings",
    "issue",
    "issue_fields",
    "severity",
    "short",
    "verified",
]

log = logging.getLogger(__name__)
SIGNATURE_HEADERS = ("sentry-app-signature", "sentry-hook-signature")
SEVERITIES: tuple[Severity, ...] = get_args(Severity)
MAX_BODY_BYTES = 64 * 1024


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


async def verified(request: Request, repo: UiRepository, box: SecretBox, public: list[str]) -> Call:
    """The request's JSON and the connection whose secret signed it; :class:`Refused` else."""
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
        raise Refused(404, f"Unknown installation {short(installation)}")
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


def alert_settings(doc: dict[str, Any]) -> dict[str, Any]:
    """``fields`` of an alert-rule-action save: a list of ``{name, value}``."""
    fields = doc.get("fields")
    if not isinstance(fields, list) or not all(isinstance(f, dict) for f in fields):
        raise Refused(400, "fields must be a list of {name, value}")
    return {f.get("name"): f.get("value") for f in fields}


def short(value: Any) -> str:
    return repr(value)[:66]  # shown by Sentry: never a whole untrusted value


def severity(value: Any) -> Severity:
    for known in SEVERITIES:
        if value == known:
            return known
    raise Refused(400, f"Severity must be one of {', '.join(SEVERITIES)}")


def issue_fields(doc: dict[str, Any]) -> dict[str, Any]:
    """``fields`` of an issue-link call: an object of form values."""
    fields = doc.get("fields")
    if not isinstance(fields, dict):
        raise Refused(400, "fields must be an object")
    return fields


def issue(doc: dict[str, Any]) -> IssueRef:
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
