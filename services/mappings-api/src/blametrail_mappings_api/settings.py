"""Control-plane settings (environment, prefix ``BLAMETRAIL_API_`` unless noted)."""

from __future__ import annotations

from blametrail_common.settings import PREFIX, BaseBlametrailSettings
from pydantic import Field

__all__ = ["ApiSettings"]


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
