"""Suspects worker settings (environment, prefix ``BLAMETRAIL_SUSPECTS_``)."""

from __future__ import annotations

from blametrail_common.settings import PREFIX, BaseBlametrailSettings
from pydantic import Field

__all__ = ["SuspectsSettings"]


class SuspectsSettings(BaseBlametrailSettings):
    host: str = Field(default="127.0.0.1", validation_alias=f"{PREFIX}SUSPECTS_HOST")
    port: int = Field(default=8086, validation_alias=f"{PREFIX}SUSPECTS_PORT")
    group_id: str = Field(default="blametrail-suspects", validation_alias=f"{PREFIX}SUSPECTS_GROUP")
    max_incidents: int = Field(default=100_000, validation_alias=f"{PREFIX}SUSPECTS_MAX_INCIDENTS")
    lookback_hours: float = Field(default=72.0, validation_alias=f"{PREFIX}SUSPECTS_LOOKBACK_HOURS")
