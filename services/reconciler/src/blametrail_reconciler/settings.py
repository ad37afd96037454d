"""Reconciler settings (environment, prefix ``BLAMETRAIL_RECONCILER_``)."""

from __future__ import annotations

from typing import Literal

from blametrail_common.settings import PREFIX, BaseBlametrailSettings
from pydantic import Field

__all__ = ["ReconcilerSettings"]


class ReconcilerSettings(BaseBlametrailSettings):
    host: str = Field(default="127.0.0.1", validation_alias=f"{PREFIX}RECONCILER_HOST")
    port: int = Field(default=8088, validation_alias=f"{PREFIX}RECONCILER_PORT")
    interval_s: float = Field(
        default=300.0, gt=0, validation_alias=f"{PREFIX}RECONCILER_INTERVAL_S"
    )
    jitter: float = Field(default=0.2, ge=0, le=1, validation_alias=f"{PREFIX}RECONCILER_JITTER")
    start_delay_s: float = Field(
        default=0.0, ge=0, validation_alias=f"{PREFIX}RECONCILER_START_DELAY_S"
    )
    """How long after start a connection's first sweep waits (then its jittered spread)."""
    overlap_s: float = Field(default=600.0, ge=0, validation_alias=f"{PREFIX}RECONCILER_OVERLAP_S")
    first_lookback_s: float = Field(
        default=3600.0, ge=0, validation_alias=f"{PREFIX}RECONCILER_FIRST_LOOKBACK_S"
    )
    settle_s: float = Field(default=120.0, ge=0, validation_alias=f"{PREFIX}RECONCILER_SETTLE_S")
    resolved_window_s: float = Field(
        default=7 * 24 * 3600.0, ge=0, validation_alias=f"{PREFIX}RECONCILER_RESOLVED_WINDOW_S"
    )
    creations: Literal["auto", "always", "never"] = Field(
        default="auto", validation_alias=f"{PREFIX}RECONCILER_CREATIONS"
    )
    concurrency: int = Field(default=4, ge=1, validation_alias=f"{PREFIX}RECONCILER_CONCURRENCY")
    page: int = Field(default=5000, ge=1, validation_alias=f"{PREFIX}RECONCILER_PAGE")
    """Incidents a sweep reads from Postgres and compares at a time: its memory is bounded by
    this, not by the number of open incidents."""
    connections_at_once: int = Field(
        default=4, ge=1, validation_alias=f"{PREFIX}RECONCILER_CONNECTIONS_AT_ONCE"
    )
    failure_backoff_s: float = Field(
        default=30.0, gt=0, validation_alias=f"{PREFIX}RECONCILER_FAILURE_BACKOFF_S"
    )
    max_attempts: int = Field(default=5, ge=1, validation_alias=f"{PREFIX}RECONCILER_MAX_ATTEMPTS")
    max_rate_limit_wait_s: float = Field(
        default=300.0, gt=0, validation_alias=f"{PREFIX}RECONCILER_MAX_RATE_LIMIT_WAIT_S"
    )
