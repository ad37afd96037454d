"""Every setting of the control plane, in one place (from the environment; ``BLAMETRAIL_API_``
unless noted). The composition root (:mod:`~blametrail_mappings_api.__main__`) builds them."""

from __future__ import annotations

from blametrail_common.forwarded import Network, parse_networks
from blametrail_common.settings import PREFIX, BaseBlametrailSettings
from pydantic import Field, SecretStr, field_validator

__all__ = ["ApiSettings", "OAuthSettings", "SentryUiSettings"]


class ApiSettings(BaseBlametrailSettings):
    host: str = Field(default="127.0.0.1", validation_alias=f"{PREFIX}API_HOST")
    port: int = Field(default=8082, validation_alias=f"{PREFIX}API_PORT")
    public_ingest_url: str = Field(
        default="http://127.0.0.1:8081", validation_alias=f"{PREFIX}PUBLIC_INGEST_URL"
    )
    """Base URL Sentry reaches ingest at; shown in each connection's webhook URL."""
    pool_max: int = Field(default=10, validation_alias=f"{PREFIX}API_POOL_MAX")
    relay_enabled: bool = Field(default=True, validation_alias=f"{PREFIX}API_RELAY_ENABLED")
    deploy_store_group: str = Field(
        default="blametrail-api-deploys", validation_alias=f"{PREFIX}API_DEPLOY_STORE_GROUP"
    )
    verify_connections: bool = Field(
        default=True, validation_alias=f"{PREFIX}API_VERIFY_CONNECTIONS"
    )
    """Check a new internal connection's token with one call to Sentry before saving it."""
    session_idle_s: int = Field(default=8 * 3600, validation_alias=f"{PREFIX}API_SESSION_IDLE_S")
    """A session unused this long is over (sign in again)."""
    session_absolute_s: int = Field(
        default=7 * 86400, validation_alias=f"{PREFIX}API_SESSION_ABSOLUTE_S"
    )
    """A session is over this long after sign-in, used or not."""
    login_window_s: int = Field(default=900, validation_alias=f"{PREFIX}API_LOGIN_WINDOW_S")
    login_account_failures: int = Field(
        default=5, validation_alias=f"{PREFIX}API_LOGIN_ACCOUNT_FAILURES"
    )
    """Failed sign-ins per account per window before it is refused (429) until the window ends."""
    login_address_failures: int = Field(
        default=20, validation_alias=f"{PREFIX}API_LOGIN_ADDRESS_FAILURES"
    )
    """Failed sign-ins per client address per window (any accounts) before 429."""
    hash_concurrency: int = Field(
        default=2, ge=1, le=16, validation_alias=f"{PREFIX}API_HASH_CONCURRENCY"
    )
    """Password hashes (sign-in, new users) computed at once; each takes 19 MiB (64 MiB for a
    hash made before issue 17 until it is rehashed) and a core."""
    hash_queue: int = Field(default=16, ge=0, validation_alias=f"{PREFIX}API_HASH_QUEUE")
    """Sign-ins waiting for a hashing slot; one more is answered 503 with ``Retry-After``."""
    trusted_proxies: str = Field(
        default="127.0.0.1/32,::1", validation_alias=f"{PREFIX}API_TRUSTED_PROXIES"
    )
    """Comma-separated networks of the proxies in front of the API (the edge, the web). From such
    a peer the client is the rightmost ``X-Forwarded-For`` hop outside these networks; from any
    other peer the header is ignored. In Kubernetes: the pod CIDR (the web's and the ingress
    controller's pods)."""

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        parse_networks(value)
        return value

    def proxies(self) -> tuple[Network, ...]:
        return parse_networks(self.trusted_proxies)


class OAuthSettings(BaseBlametrailSettings):
    """The public (OAuth) Sentry app: install flow and token keeper."""

    sentry_url: str = Field(default="https://sentry.io", validation_alias=f"{PREFIX}SENTRY_URL")
    """Sentry (SaaS or self-hosted) as the public app sees it: API, install page."""
    client_id: str = Field(default="", validation_alias=f"{PREFIX}SENTRY_CLIENT_ID")
    """The public app's client id; empty: OAuth installs are off (internal integrations only)."""
    app_slug: str = Field(default="blametrail", validation_alias=f"{PREFIX}SENTRY_APP_SLUG")
    connect_ttl_s: int = Field(default=900, validation_alias=f"{PREFIX}API_CONNECT_LINK_TTL_S")
    refresh_margin_s: int = Field(
        default=3600, validation_alias=f"{PREFIX}API_OAUTH_REFRESH_MARGIN_S"
    )
    """Refresh a token this long before its expiry (Sentry's tokens live 8 h)."""
    check_s: float = Field(default=5.0, validation_alias=f"{PREFIX}API_OAUTH_CHECK_S")
    group_id: str = Field(
        default="blametrail-api-oauth", validation_alias=f"{PREFIX}API_OAUTH_GROUP"
    )


class SentryUiSettings(BaseBlametrailSettings):
    """The Sentry UI-component callbacks (``/sentry/...``)."""

    public_client_secrets: SecretStr = Field(
        default=SecretStr(""), validation_alias=f"{PREFIX}INGEST_PUBLIC_CLIENT_SECRETS"
    )
    """The public (OAuth) app's client secret(s), the very variable ingest reads."""
    incident_url: str = Field(default="", validation_alias=f"{PREFIX}API_INCIDENT_URL")
    """Link target shown in Sentry, ``{incident_id}`` replaced; default: the web's incident page
    on ``BLAMETRAIL_PUBLIC_INGEST_URL`` (the public host, whose other paths are the web's)."""
    deadline_s: float = Field(default=0.8, validation_alias=f"{PREFIX}API_SENTRY_UI_DEADLINE_S")
    unbound_calls_per_minute: int = Field(
        default=60, ge=0, validation_alias=f"{PREFIX}API_SENTRY_UI_UNBOUND_PER_MINUTE"
    )
    """UI calls per client address per minute that name an installation no connection is bound
    to (each costs an HMAC per internal connection still waiting for its installation); over it:
    429. 0: no limit."""
    installations_group: str = Field(
        default="blametrail-api-installations",
        validation_alias=f"{PREFIX}API_INSTALLATIONS_GROUP",
    )
    """Consumer group recording the installation each internal connection's webhooks name."""

    def public_secrets(self) -> list[str]:
        raw = self.public_client_secrets.get_secret_value()
        return [s.strip() for s in raw.split(",") if s.strip()]
