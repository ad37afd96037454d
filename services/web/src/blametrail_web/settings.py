"""Web settings (environment, prefix ``BLAMETRAIL_WEB_``)."""

from __future__ import annotations

from blametrail_common.settings import PREFIX, BaseBlametrailSettings
from pydantic import Field, SecretStr

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
    """Signs the CSRF tokens, the who-am-I cookie and flash messages. Empty: derived from
    ``BLAMETRAIL_SECRET_KEYS`` when set, else random per process (one replica only)."""
    poll_interval_s: float = Field(default=5.0, validation_alias=f"{PREFIX}WEB_POLL_INTERVAL_S")
    """How often the incidents list asks for new incidents."""
