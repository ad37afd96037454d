"""Request and response models of the REST API (distinct from the events on Kafka). The routes
validate with them and ``/openapi.json`` is generated from them; the error bodies' models are
:mod:`blametrail_mappings_api.api.problems`'."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar
from urllib.parse import urlparse

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

__all__ = [
    "ApiKeyCreate",
    "ApiKeyCreated",
    "ApiKeyOut",
    "AuditEntry",
    "ConnectLinkOut",
    "ConnectionCreate",
    "ConnectionHealth",
    "ConnectionOut",
    "ConnectionPatch",
    "DeployCreate",
    "DeployOut",
    "IncidentOut",
    "IncidentSummary",
    "MappingCreate",
    "MappingOut",
    "MappingPatch",
    "MeOut",
    "Page",
    "SentryProject",
    "SentryProjects",
    "ServiceCreate",
    "ServiceOut",
    "ServicePatch",
    "SessionCreate",
    "SessionOut",
    "UserCreate",
    "UserOut",
    "UserPatch",
]

Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,99}$")]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Secret = Annotated[str, StringConstraints(min_length=1, max_length=500)]


def _api_base(url: str) -> str:
    parsed = urlparse(url)
    local = parsed.hostname in ("127.0.0.1", "localhost", "::1")
    if parsed.scheme != "https" and not (parsed.scheme == "http" and local):
        raise ValueError("must be an https URL (http only for a loopback host)")
    if not parsed.hostname or parsed.path not in ("", "/") or parsed.query:
        raise ValueError("must be a base URL such as https://sentry.io or https://de.sentry.io")
    if not local and _internal_address(parsed.hostname):
        raise ValueError(
            "must not be a private, loopback, link-local or reserved address (use Sentry's name)"
        )
    return url.rstrip("/")


def _internal_address(host: str) -> bool:
    """Whether ``host`` is an IP literal no Sentry is reached at from here: private (RFC 1918,
    unique-local), loopback, link-local (cloud metadata), shared, reserved, multicast or
    unspecified, also written as an IPv4-mapped IPv6 address."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False  # a name
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


ApiBase = Annotated[str, AfterValidator(_api_base)]


class _In(BaseModel):
    """A request body: unknown fields refused, and no NUL character in any string (Postgres
    cannot store one in text: refused here with a 422 naming it, never a 500 later)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        if _has_nul(data):
            raise ValueError("text must not contain NUL (\\u0000) characters")
        return data


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


class _Patch(_In):
    """A partial update: a field left out keeps its value; ``null`` is refused for fields that
    cannot be empty (it would otherwise reach the database as a NOT NULL violation)."""

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            nulls = sorted(k for k, v in data.items() if v is None and k in cls.model_fields)
            if nulls:
                raise ValueError(f"{', '.join(nulls)} cannot be null; leave a field out to keep it")
        return data


class ServiceCreate(_In):
    name: Name
    slug: Slug
    description: str = Field(default="", max_length=2000)


class ServicePatch(_Patch):
    name: Name | None = None
    slug: Slug | None = None
    description: str | None = Field(default=None, max_length=2000)


class ServiceOut(BaseModel):
    id: str
    name: str
    slug: str
    description: str
    created_at: datetime
    updated_at: datetime


class ConnectionCreate(_In):
    mode: Literal["internal"] = Field(
        description="'oauth' connections come from the OAuth install flow"
    )
    sentry_org_slug: Slug
    api_base_url: ApiBase = "https://sentry.io"
    client_secret: Secret
    auth_token: Secret


class ConnectionPatch(_Patch):
    api_base_url: ApiBase | None = None
    client_secret: Secret | None = Field(
        default=None,
        description="New client secret; the previous one stays valid until retire_old_secrets",
    )
    retire_old_secrets: bool = False
    auth_token: Secret | None = None
    enabled: bool | None = None
    writeback: bool | None = Field(
        default=None,
        description="Mirror BlameTrail's resolve / reopen / acknowledge onto the Sentry issue",
    )


class ConnectionOut(BaseModel):
    """Secrets are write-only: only whether they are set is shown."""

    id: str
    mode: str
    sentry_org_slug: str
    api_base_url: str
    enabled: bool
    writeback: bool = True
    """BlameTrail's resolve / reopen / acknowledge are mirrored onto the Sentry issue."""
    webhook_url: str
    client_secrets_set: int
    auth_token_set: bool
    installation_uuid: str | None
    token_expires_at: datetime | None = None
    """OAuth connections: when the current token expires (it is refreshed an hour before)."""
    created_at: datetime
    updated_at: datetime


class ConnectLinkOut(BaseModel):
    """Open ``url`` in a browser signed in to Sentry to install the public app for this
    organization; it expires at ``expires_at``."""

    url: str
    expires_at: datetime


class MappingCreate(_In):
    connection_id: str
    sentry_project_slug: Slug
    sentry_project_id: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,20}$")] | None = None
    service_id: str
    active: bool = True


class MappingPatch(_In):
    service_id: str | None = None
    active: bool | None = None
    sentry_project_id: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,20}$")] | None = None


class MappingOut(BaseModel):
    id: str
    connection_id: str
    sentry_project_slug: str
    sentry_project_id: str | None
    service_id: str
    active: bool
    created_at: datetime
    updated_at: datetime


Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


class DeployCreate(_In):
    service_id: str
    version: Text | None = Field(default=None, description="release, e.g. checkout-api@2.14.0")
    environment: Annotated[str, StringConstraints(max_length=64)] | None = None
    commit_sha: Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{7,64}$")] | None = None
    started_at: AwareDatetime | None = None
    finished_at: AwareDatetime | None = None
    author: Text | None = None
    url: Text | None = None
    changed_paths: list[Annotated[str, StringConstraints(min_length=1, max_length=1000)]] | None = (
        Field(default=None, max_length=10_000, description="repository-relative; omit if unknown")
    )

    @model_validator(mode="after")
    def _times(self) -> DeployCreate:
        if self.started_at is None and self.finished_at is None:
            raise ValueError("started_at or finished_at is required")
        if self.started_at and self.finished_at and self.finished_at < self.started_at:
            raise ValueError("finished_at is before started_at")
        return self


class DeployOut(BaseModel):
    id: str
    service_id: str
    version: str | None
    environment: str | None
    commit_sha: str | None
    started_at: datetime | None
    finished_at: datetime | None
    author: str | None
    url: str | None
    changed_paths: list[str] | None
    source: str
    created_at: datetime
    updated_at: datetime


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list, oldest first (incidents and audit: newest first)."""

    items: list[T]
    next_cursor: str | None
    """Pass as ``cursor`` for the next page; ``null`` on the last one."""


# -- the read model (the projection's tables; answered as stored, so documented, not validated)
class SentryLink(BaseModel):
    issue_id: str | None
    short_id: str | None
    web_url: str | None
    project_slug: str | None
    metric_alert_id: str | None


class _Incident(BaseModel):
    incident_id: str
    service_id: str | None
    source: str
    status: str
    severity: str
    title: str
    culprit: str | None
    assignee: dict[str, Any] | None
    first_seen: datetime | None
    last_seen: datetime | None
    event_count: int | None
    opened_at: datetime
    resolved_at: datetime | None
    updated_at: datetime


class IncidentSummary(_Incident):
    sentry: SentryLink


class TimelineEntry(BaseModel):
    event_id: str
    type: str
    occurred_at: datetime
    payload: dict[str, Any]


class Suspects(BaseModel):
    computed_at: datetime
    candidates: int
    ranked: list[Any]
    """Suspect deploys, most likely first, each with every signal's contribution."""


class IncidentOut(_Incident):
    sentry: dict[str, Any]
    """The whole Sentry reference (connection, organization, project, issue, links)."""
    timeline: list[TimelineEntry]
    enrichment: dict[str, Any] | None
    """``status``, ``reason``, ``fetched_at`` and the record (tags, stacktrace, breadcrumbs...)."""
    sentry_links: list[dict[str, Any]]
    suspects: Suspects | None


class AuditEntry(BaseModel):
    """A webhook received but not turned into an incident, and why."""

    model_config = ConfigDict(extra="allow")

    event_id: str
    connection_id: str | None
    reason: str
    resource: str | None
    action: str | None
    project_slug: str | None
    project_id: str | None
    detail: dict[str, Any]
    received_at: datetime


# -- people: sessions, users, API keys --------------------------------------------------------

Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, max_length=320, pattern=r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$"
    ),
]
Role = Literal["admin", "member"]
Password = Annotated[
    str,
    StringConstraints(min_length=12, max_length=1000),
    Field(description="At least 12 characters"),
]


class SessionCreate(_In):
    email: Annotated[str, StringConstraints(min_length=1, max_length=320)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=1000)]


class UserBrief(BaseModel):
    id: str
    email: str
    name: str
    role: str
    org: str
    """The organization's slug."""


class SessionOut(BaseModel):
    """A session: send ``token`` as ``Authorization: Bearer``. It ends at ``expires_at`` at the
    latest, or after ``idle_timeout_s`` seconds unused; signing out ends it at once."""

    token: str
    expires_at: datetime
    idle_timeout_s: int
    user: UserBrief


class MeOut(BaseModel):
    """Who calls: a signed-in user (``kind`` ``user``) or an API key (``api_key``, no email)."""

    kind: Literal["user", "api_key"]
    id: str
    email: str | None
    name: str
    role: str
    org: str


class UserCreate(_In):
    email: Email
    name: Name
    password: Password
    role: Role


class UserPatch(_Patch):
    name: Name | None = None
    role: Role | None = None
    disabled: bool | None = Field(default=None, description="true also ends their sessions")


class UserOut(BaseModel):
    id: str
    email: str
    name: str
    role: str
    disabled: bool
    created_at: datetime
    updated_at: datetime


class ApiKeyCreate(_In):
    name: Name
    role: Role


class ApiKeyOut(BaseModel):
    """An API key as listed: never the key itself (shown once, when created)."""

    id: str
    prefix: str
    name: str
    role: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    created_by_user_id: str | None
    """The user this key was made by (a key made by a key: that key's user; ``None`` for a key
    made by the CLI); disabling the user revokes the key."""


class ApiKeyCreated(ApiKeyOut):
    key: str
    """The key: shown this once, stored only as a hash."""


# -- a connection's health and Sentry projects ------------------------------------------------


class EnrichmentError(BaseModel):
    at: datetime
    reason: str | None


class ConnectionHealth(BaseModel):
    """``accepted_24h``: incident events projected from this connection's webhooks in the last
    24 h (by event time); ``ignored_24h``: its webhooks audited and not turned into incidents,
    by reason; ``last_webhook_at``: the latest of either."""

    model_config = ConfigDict(extra="allow")  # more parts may be added (e.g. last_sweep)

    last_webhook_at: datetime | None
    accepted_24h: int
    ignored_24h: dict[str, int]
    last_enrichment_error: EnrichmentError | None
    token_expires_at: datetime | None
    token_refreshed_at: datetime | None
    webhook_url: str


class SentryProject(BaseModel):
    id: str
    slug: str
    name: str


class SentryProjects(BaseModel):
    items: list[SentryProject]
