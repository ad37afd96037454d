"""Write-back worker settings (environment, prefix ``BLAMETRAIL_SYNC_``)."""

from __future__ import annotations

from blametrail_common.settings import PREFIX, BaseBlametrailSettings
from pydantic import Field

__all__ = ["SyncSettings"]


class SyncSettings(BaseBlametrailSettings):
    host: str = Field(default="127.0.0.1", validation_alias=f"{PREFIX}SYNC_HOST")
    port: int = Field(default=8089, validation_alias=f"{PREFIX}SYNC_PORT")
    group_id: str = Field(default="blametrail-sync", validation_alias=f"{PREFIX}SYNC_GROUP")
    concurrency: int = Field(default=8, ge=1, validation_alias=f"{PREFIX}SYNC_CONCURRENCY")
    """Incidents of one poll batch written back at a time (the client's per-organization
    budget still applies)."""
    batch_max: int = Field(default=200, ge=1, validation_alias=f"{PREFIX}SYNC_BATCH_MAX")
    max_attempts: int = Field(default=5, ge=1, validation_alias=f"{PREFIX}SYNC_MAX_ATTEMPTS")
    max_rate_limit_wait_s: float = Field(
        default=60.0, gt=0, validation_alias=f"{PREFIX}SYNC_MAX_RATE_LIMIT_WAIT_S"
    )
    """Past this much waiting for Sentry's rate-limit window, a write-back has failed
    (dead-lettered): a batch must never outlive the consumer's poll interval."""
    timeout_s: float = Field(default=5.0, gt=0, validation_alias=f"{PREFIX}SYNC_TIMEOUT_S")
