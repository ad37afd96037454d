"""Normalizer settings (environment, prefix ``BLAMETRAIL_NORMALIZER_``)."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

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
    instance_id: str = Field(default="", validation_alias=f"{PREFIX}NORMALIZER_INSTANCE_ID")
    """This replica's part of its static group membership id (empty: the health port, unique
    among the replicas of one host because each binds it)."""
    static_membership: bool = Field(
        default=True, validation_alias=f"{PREFIX}NORMALIZER_STATIC_MEMBERSHIP"
    )
    """Join the consumer group as a static member (``group.instance.id``)."""
    batch_max: int = Field(default=500, ge=1, validation_alias=f"{PREFIX}NORMALIZER_BATCH_MAX")
    """Raw webhooks normalized together, their outputs published in one go."""
    batch_within_s: float = Field(
        default=0.02, gt=0, validation_alias=f"{PREFIX}NORMALIZER_BATCH_WITHIN_S"
    )
    """How long a batch waits for more webhooks once it has one (added to latency when idle)."""
    echo_lookback_s: float = Field(
        default=3600.0, gt=0, validation_alias=f"{PREFIX}NORMALIZER_ECHO_LOOKBACK_S"
    )
    """How far back a replica reads ``incident-writebacks`` at start to recognise Sentry's echo
    of our own write-backs (longer than an outage whose backlog of webhooks it must still read
    right; start-up reads this much of the log, never all of it)."""
    data_dir: str = Field(default="", validation_alias=f"{PREFIX}NORMALIZER_DATA_DIR")
    """faust's data directory (the app keeps no table on disk: only faust's empty skeleton).
    Empty: ``<system temp dir>/blametrail-faust/<app id>``, never the working directory."""

    def faust_datadir(self) -> Path:
        if self.data_dir:
            return Path(self.data_dir)
        return Path(tempfile.gettempdir()) / "blametrail-faust" / self.app_id

    def group_instance_id(self, hostname: str | None = None) -> str | None:
        """``<app id>-<host or pod name>-<instance id or port>``: the same again when this replica
        restarts (it takes its partitions back at once, without a rebalance), different for
        every other replica, on this host or another; ``None`` without static membership."""
        if not self.static_membership:
            return None
        host = hostname if hostname is not None else socket.gethostname()
        return f"{self.app_id}-{host}-{self.instance_id or self.port}"
