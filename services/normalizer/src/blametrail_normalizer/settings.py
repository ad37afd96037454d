"""Normalizer settings (environment, prefix ``BLAMETRAIL_NORMALIZER_``)."""

from __future__ import annotations

from blametrail_common.settings import PREFIX, BaseBlametrailSettings
from pydantic import Field

__all__ = ["NormalizerSettings"]


class NormalizerSettings(BaseBlametrailSettings):
    app_id: str = Field(
        default="blametrail-normalizer", validation_alias=f"{PREFIX}NORMALIZER_APP_ID"
    )
    """Faust app id: the consumer group and the prefix of the app's own changelog topics."""
    host: str = Field(default="127.0.0.1", validation_alias=f"{PREFIX}NORMALIZER_HOST")
    port: int = Field(default=8083, validation_alias=f"{PREFIX}NORMALIZER_PORT")
    """Port of the health/metrics server."""
