"""Ingest settings (environment, prefix ``BLAMETRAIL_INGEST_`` unless noted)."""

from __future__ import annotations

from pathlib import Path

from blametrail_common.settings import PREFIX, BaseBlametrailSettings
from pydantic import Field, SecretStr

__all__ = ["IngestSettings"]


class IngestSettings(BaseBlametrailSettings):
    host: str = Field(default="127.0.0.1", validation_alias=f"{PREFIX}INGEST_HOST")
    port: int = Field(default=8081, validation_alias=f"{PREFIX}INGEST_PORT")
    public_client_secrets: SecretStr = Field(
        default=SecretStr(""), validation_alias=f"{PREFIX}INGEST_PUBLIC_CLIENT_SECRETS"
    )
    """Client secret(s) of the public (OAuth) app, comma-separated during a rotation."""
    max_body_bytes: int = Field(
        default=1024 * 1024, validation_alias=f"{PREFIX}INGEST_MAX_BODY_BYTES"
    )
    body_timeout_s: float = Field(default=0.5, validation_alias=f"{PREFIX}INGEST_BODY_TIMEOUT_S")
    publish_timeout_s: float = Field(
        default=0.6, validation_alias=f"{PREFIX}INGEST_PUBLISH_TIMEOUT_S"
    )
    """How long Kafka may take to ack before the batch is spooled. Sentry waits 1 s for the
    answer; the rest is for the spool's fsync. 0.25 s was tight on a busy machine: a healthy
    broker's ack took longer under load, and every spooled batch sends the webhooks behind it
    to the spool too until it is drained (bench/storm: most of a 200/s storm was spooled)."""
    spool_dir: Path = Field(
        default=Path(".local/spool"), validation_alias=f"{PREFIX}INGEST_SPOOL_DIR"
    )
    spool_max_bytes: int = Field(
        default=512 * 1024 * 1024, validation_alias=f"{PREFIX}INGEST_SPOOL_MAX_BYTES"
    )
    limit_concurrency: int = Field(
        default=512, validation_alias=f"{PREFIX}INGEST_LIMIT_CONCURRENCY"
    )
    startup_wait_s: float = Field(default=10.0, validation_alias=f"{PREFIX}INGEST_STARTUP_WAIT_S")
    """Do not listen before the connections table has loaded, for at most this long (Kafka
    away at start: then listen anyway; internal webhooks get 503 until it has loaded)."""

    def public_secrets(self) -> list[str]:
        return [
            s.strip() for s in self.public_client_secrets.get_secret_value().split(",") if s.strip()
        ]
