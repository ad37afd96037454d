"""Who is calling (PROTOCOL §4): a UI-component request is signed with ``Sentry-App-Signature``
(HMAC-SHA256 of the raw body; of ``""`` for the GETs) under a client secret of the connection its
``installationId`` belongs to, and every refusal says which of these failed:

- a connection that knows its installation uuid (OAuth installs bind one; an internal one learns
  it from its webhooks, :func:`~.binding.record_installation`) is checked with its own secrets
  plus, for OAuth, the public app's: a bad signature is a 401;
- otherwise (an installation no connection is bound to) a call the public app signed is a 404
  (not connected yet); else only the enabled internal connections that know no installation yet
  are candidates (a connection bound to another installation is never meant, and its secret is
  not even tried: issue 17 M3), and calls of this kind are limited per client address (429: each
  costs an HMAC per candidate); of the candidates exactly one must have signed (none, or no
  candidate: 401 naming both causes; two that share the secret: 409, the message naming why). A signed POST then teaches that
  connection its installation (the body, ``installationId`` included, is what was signed; a
  GET's query is not, so a GET never teaches).

Decrypted client secrets are cached (:class:`~.ui_guard.SecretCache`, by connection and
ciphertexts, so a rotation is a new entry), so no call decrypts a secret twice.

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
from blametrail_common.forwarded import Network, client_address
from starlette.requests import Request

from blametrail_mappings_api.sentry.binding import MAX_INSTALLATION_ID, record_installation
from blametrail_mappings_api.sentry.ui_guard import AddressWindow, SecretCache
from blametrail_mappings_api.store.db import Row
from blametrail_mappings_api.store.ui import IssueRef, UiRepository

__all__ = [
    "MAX_BODY_BYTES",
    "SEVERITIES",
    "Call",
    "Guard",
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

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


@dataclass
class Guard:
    """One per process: the secrets cache and the per-address limit of unbound calls."""

    unbound: AddressWindow
    secrets: SecretCache
    proxies: tuple[Network, ...] = ()


@dataclass(frozen=True)
class Call:
    """A verified UI-component request: its JSON (``{}`` for GETs) and who sent it."""

    request: Request
    doc: dict[str, Any]
    connection: Row

    @property
    def org(self) -> str:
        return str(self.connection["org_id"])


async def verified(
    request: Request, repo: UiRepository, box: SecretBox, public: list[str], guard: Guard
) -> Call:
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
    address = client_address(
        request.client.host if request.client else None,
        request.headers.getlist("x-forwarded-for"),
        guard.proxies,
    )
    signed = _Signed(body, values[0], installation, request.method == "POST", address)
    connection = await _connection(repo, box, public, signed, guard)
    return Call(request, doc, connection)


@dataclass(frozen=True)
class _Signed:
    body: bytes
    sig: str
    installation: str
    learns: bool  # the installation id is inside the signed body
    address: str  # the client's (the per-address limit of unbound calls)


async def _connection(
    repo: UiRepository, box: SecretBox, public: list[str], s: _Signed, guard: Guard
) -> Row:
    if not signature.is_well_formed(s.sig):
        raise Refused(401, "Sentry-App-Signature is not a hex HMAC-SHA256")
    bound = await repo.connection_for_installation(s.installation)
    if bound is not None:
        secrets = _secrets(box, bound, guard) + (public if bound["mode"] == "oauth" else [])
        if not signature.verify(s.body, s.sig, secrets):
            raise Refused(401, "Sentry-App-Signature does not match the body")
        return bound
    if public and signature.verify(s.body, s.sig, public):
        raise Refused(404, f"Unknown installation {short(s.installation)}")
    wait = guard.unbound.take(s.address)
    if wait is not None:
        seconds = max(1, int(wait + 0.999))
        raise Refused(
            429,
            f"Too many calls naming an unknown installation; try again in {seconds} s",
            {"Retry-After": str(seconds)},
        )
    # Internal integrations: the webhook URL names the connection, UI calls only the
    # installation; the client secret is the app's own, so the one that verifies names it.
    # Only a connection that knows no installation yet can be meant.
    candidates = await repo.unbound_internal_connections()
    signers = [c for c in candidates if signature.verify(s.body, s.sig, _secrets(box, c, guard))]
    if not signers:
        raise Refused(401, _UNKNOWN.format(short(s.installation)))
    chosen = _one_unbound(signers, s.installation)
    if not s.learns:
        return chosen
    row = await record_installation(repo.pool, str(chosen["id"]), s.installation, replace=False)
    if row is None or row["installation_uuid"] != s.installation:
        raise Refused(
            409, f"Installation {short(s.installation)} is held by another BlameTrail connection"
        )
    return row


_NOT_THE_ONE = "Installation {} is not the one this BlameTrail connection receives webhooks from"
_UNKNOWN = (
    "Installation {} is not the one a BlameTrail connection receives webhooks from,"
    " or Sentry-App-Signature does not match the body"
)


def _one_unbound(signers: list[Row], installation: str) -> Row:
    """The connection meant, among the internal ones whose secret signed a call naming an
    installation none of them is bound to."""
    unbound = [c for c in signers if c["installation_uuid"] is None]
    if not unbound:  # bound since the candidates were read
        raise Refused(403, _NOT_THE_ONE.format(short(installation)))
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


def _secrets(box: SecretBox, connection: Row, guard: Guard) -> list[str]:
    """The connection's client secrets, decrypted once (cached by connection and ciphertexts)."""

    def decrypt(enc: str) -> str | None:
        try:
            return box.decrypt(enc)
        except SecretBoxError:
            log.error(
                "connection secret undecryptable", extra={"connection_id": str(connection["id"])}
            )
            return None

    return guard.secrets.get(str(connection["id"]), connection["client_secrets_enc"], decrypt)


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
