"""Request and response models of the REST API (distinct from the events on Kafka)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "ConnectionCreate",
    "ConnectionOut",
    "ConnectionPatch",
    "MappingCreate",
    "MappingOut",
    "MappingPatch",
    "ServiceCreate",
    "ServiceOut",
    "ServicePatch",
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
    return url.rstrip("/")


ApiBase = Annotated[str, AfterValidator(_api_base)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServiceCreate(_In):
    name: Name
    slug: Slug
    description: str = Field(default="", max_length=2000)


class ServicePatch(_In):
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


class ConnectionPatch(_In):
    api_base_url: ApiBase | None = None
    client_secret: Secret | None = Field(
        default=None,
        description="New client secret; the previous one stays valid until retire_old_secrets",
    )
    retire_old_secrets: bool = False
    auth_token: Secret | None = None
    enabled: bool | None = None


class ConnectionOut(BaseModel):
    """Secrets are write-only: only whether they are set is shown."""

    id: str
    mode: str
    sentry_org_slug: str
    api_base_url: str
    enabled: bool
    webhook_url: str
    client_secrets_set: int
    auth_token_set: bool
    installation_uuid: str | None
    created_at: datetime
    updated_at: datetime


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
