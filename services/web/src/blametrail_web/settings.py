"""Web settings (environment, prefix ``BLAMETRAIL_WEB_``)."""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

from blametrail_common.forwarded import Network, parse_networks
from blametrail_common.settings import PREFIX, BaseBlametrailSettings
from pydantic import Field, SecretStr, field_validator

__all__ = ["WebSettings"]


class WebSettings(BaseBlametrailSettings):
    host: str = Field(default="127.0.0.1", validation_alias=f"{PREFIX}WEB_HOST")
    port: int = Field(default=8087, validation_alias=f"{PREFIX}WEB_PORT")
    api_url: str = Field(default="http://127.0.0.1:8082", validation_alias=f"{PREFIX}WEB_API_URL")
    """The REST API the pages act through (the web holds no data of its own)."""
    api_timeout_s: float = Field(default=10.0, validation_alias=f"{PREFIX}WEB_API_TIMEOUT_S")
    cookie_secure: bool = Field(default=True, validation_alias=f"{PREFIX}WEB_COOKIE_SECURE")
    """Mark cookies Secure (HTTPS only); turn off only for plain-HTTP loopback development."""
    secret_key: SecretStr = Field(default=SecretStr(""), validation_alias=f"{PREFIX}WEB_SECRET_KEY")
    """Signs the CSRF tokens, the who-am-I cookie and flash messages: the web's own key (never the
    master ``BLAMETRAIL_SECRET_KEYS``, which the web is not given). Empty: random per process
    (one replica only; forms open before a restart are refused), with a warning."""
    poll_interval_s: float = Field(default=5.0, validation_alias=f"{PREFIX}WEB_POLL_INTERVAL_S")
    """How often the incidents list asks for new incidents."""
    trusted_proxies: str = Field(
        default="127.0.0.1/32,::1", validation_alias=f"{PREFIX}WEB_TRUSTED_PROXIES"
    )
    """Comma-separated networks of the proxies in front of the web (the ingress controller, the
    dev edge). From such a peer the browser is the rightmost ``X-Forwarded-For`` hop outside these
    networks; from any other peer the header is ignored. Kubernetes: the pod CIDR."""
    public_ingest_url: str = Field(
        default="http://127.0.0.1:8081", validation_alias=f"{PREFIX}PUBLIC_INGEST_URL"
    )
    """The API's own setting (the same variable and default): the public host the connect link
    goes through. Its origin may take the "Connect with Sentry" form (``form-action``)."""
    sentry_url: str = Field(default="https://sentry.io", validation_alias=f"{PREFIX}SENTRY_URL")
    """The public app's Sentry (the API's ``BLAMETRAIL_SENTRY_URL``, the same default): the
    connect link redirects to its install page, so its origin may take the form too."""
    connect_origins: str = Field(default="", validation_alias=f"{PREFIX}WEB_CONNECT_ORIGINS")
    """Comma-separated origins besides those two that "Connect with Sentry" redirects through
    after its form is posted (another proxy in between): with ours and the two above, the only
    ones the pages' Content-Security-Policy lets a form submission go to (``form-action``)."""

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        parse_networks(value)
        return value

    @field_validator("connect_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        for origin in (o.strip() for o in value.split(",") if o.strip()):
            parts = _url_parts(origin)
            if parts.path not in ("", "/") or parts.query or parts.fragment:
                raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
        return value

    @field_validator("public_ingest_url", "sentry_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        _url_parts(value.strip())
        return value

    def proxies(self) -> tuple[Network, ...]:
        return parse_networks(self.trusted_proxies)

    def form_origins(self) -> tuple[str, ...]:
        """The origins besides ours a form may be sent to (each once): the public ingest URL's,
        Sentry's, then ``connect_origins``."""
        derived = [_origin(self.public_ingest_url.strip()), _origin(self.sentry_url.strip())]
        extra = [o.strip().rstrip("/") for o in self.connect_origins.split(",") if o.strip()]
        return tuple(dict.fromkeys([*derived, *extra]))


def _url_parts(url: str) -> SplitResult:
    """An http(s) URL with a host, nothing in it that could end or extend a CSP directive."""
    parts = urlsplit(url)
    if (
        parts.scheme not in ("http", "https")
        or not parts.netloc
        or "@" in parts.netloc
        or any(ch in url for ch in " ;,'\"")
        or any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url)
    ):
        raise ValueError(f"not an origin (scheme://host[:port]): {url!r}")
    return parts


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
