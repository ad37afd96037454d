"""Who is calling (PROTOCOL §4): a UI-component request is signed with ``Sentry-App-Signature``
(HMAC-SHA256 of the raw body; of ``""`` for the GETs) under a client secret of the connection its
``installationId`` belongs to, and every refusal says which of these failed:

- a connection that knows its installation uuid (OAuth installs bind one; an internal one learns
  it from its webhooks, :func:`~.binding.record_installation`) is checked with its own secrets
  plus, for OAuth, the public app's: a bad signature is a 401;
- otherwise the internal connections whose secret signed are the candidates: none is a 401 (a
  call the public app signed for an installation not connected yet is a 404); one that knows
  another installation is never meant (403); of those that know none, exactly one must be left
  (two that share the secret: 409, the message naming why). A signed POST then teaches that
  connection its installation (the body, ``installationId`` included, is what was signed; a
  GET's query is not, so a GET never teaches).

Also the request shapes (PROTOCOL §4.1, §4.2). Every refusal is a :class:`Refused`: a 4xx
``{"message": ...}``, which Sentry shows.
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

from blametrail_mappings_api.sentry.binding import MAX_INSTALLATION_ID, record_installation
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
    if len(installation) > MAX_INSTALLATION_ID:
        raise Refused(400, f"installationId over {MAX_INSTALLATION_ID} characters")
    signed = _Signed(body, values[0], installation, learns=request.method == "POST")
    connection = await _connection(repo, box, public, signed)
    return Call(request, doc, connection)


@dataclass(frozen=True)
class _Signed:
    body: bytes
    sig: str
    installation: str
    learns: bool  # the installation id is inside the signed body


async def _connection(repo: UiRepository, box: SecretBox, public: list[str], s: _Signed) -> Row:
    if not signature.is_well_formed(s.sig):
        raise Refused(401, "Sentry-App-Signature is not a hex HMAC-SHA256")
    bound = await repo.connection_for_installation(s.installation)
    if bound is not None:
        secrets = _secrets(box, bound) + (public if bound["mode"] == "oauth" else [])
        if not signature.verify(s.body, s.sig, secrets):
            raise Refused(401, "Sentry-App-Signature does not match the body")
        return bound
    # Internal integrations: the webhook URL names the connection, UI calls only the
    # installation; the client secret is the app's own, so the one that verifies names it.
    signers = [
        c
        for c in await repo.internal_connections()
        if signature.verify(s.body, s.sig, _secrets(box, c))
    ]
    if not signers:
        if public and signature.verify(s.body, s.sig, public):
            raise Refused(404, f"Unknown installation {short(s.installation)}")
        raise Refused(401, "Sentry-App-Signature does not match the body")
    chosen = _one_unbound(signers, s.installation)
    if not s.learns:
        return chosen
    row = await record_installation(repo.pool, str(chosen["id"]), s.installation, replace=False)
    if row is None or row["installation_uuid"] != s.installation:
        raise Refused(
            409, f"Installation {short(s.installation)} is held by another BlameTrail connection"
        )
    return row


def _one_unbound(signers: list[Row], installation: str) -> Row:
    """The connection meant, among the internal ones whose secret signed a call naming an
    installation none of them is bound to."""
    unbound = [c for c in signers if c["installation_uuid"] is None]
    if not unbound:
        raise Refused(
            403,
            f"Installation {short(installation)} is not the one this BlameTrail connection"
            " receives webhooks from",
        )
    if len(unbound) == 1:
        return unbound[0]
    if len({str(c["org_id"]) for c in unbound}) > 1:
        raise Refused(
            409, "This installation is connected to more than one BlameTrail organization"
        )
    raise Refused(
        409,
        f"{len(unbound)} BlameTrail connections share this client secret and none has had a"
        f" webhook from installation {short(installation)} yet: send one (a test alert) or give"
        " each connection its own secret",
    )


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
