"""Projector settings (environment, prefix ``BLAMETRAIL_PROJECTION_``).

The variable names predate the projector's own package and stay as they are, so deployments
keep working.
"""

from __future__ import annotations

from blametrail_common.settings import PREFIX, BaseBlametrailSettings
from pydantic import Field

__all__ = ["ProjectorSettings"]


class ProjectorSettings(BaseBlametrailSettings):
    host: str = Field(default="127.0.0.1", validation_alias=f"{PREFIX}PROJECTION_HOST")
    port: int = Field(default=8085, validation_alias=f"{PREFIX}PROJECTION_PORT")
    group_id: str = Field(
        default="blametrail-projection", validation_alias=f"{PREFIX}PROJECTION_GROUP"
    )
