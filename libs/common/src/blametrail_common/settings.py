"""Settings building blocks (pydantic-settings). Every variable is prefixed ``BLAMETRAIL_``.

Two variables also answer to their conventional unprefixed names, because tools and people
already export them: ``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = "BLAMETRAIL_"


class BaseBlametrailSettings(BaseSettings):
    """Base for every settings class: env prefix, ignore unknown variables."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        extra="ignore",
        frozen=True,
        validate_by_name=True,
        validate_by_alias=True,
    )


class KafkaSettings(BaseBlametrailSettings):
    """How to reach Kafka and how our producers behave."""

    bootstrap_servers: str = Field(
        default="127.0.0.1:19092",
        validation_alias=AliasChoices(
            f"{PREFIX}KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"
        ),
    )
    topic_prefix: str = Field(default="", validation_alias=f"{PREFIX}TOPIC_PREFIX")
    client_id: str = Field(default="blametrail", validation_alias=f"{PREFIX}KAFKA_CLIENT_ID")
    linger_ms: int = Field(default=5, validation_alias=f"{PREFIX}KAFKA_LINGER_MS")
    batch_gather_ms: int = Field(
        default=20, ge=0, validation_alias=f"{PREFIX}KAFKA_BATCH_GATHER_MS"
    )
    """How long a consumer loop that polled some records, but fewer than a full batch, waits
    for more before it handles them (:func:`~blametrail_common.kafka.consumer.poll_batch`): a
    busy loop pays its per-batch costs (a transaction, a commit) once per gather, not once per
    handful of records. An idle loop still waits in one long poll. 0: handle at once."""
    fetch_min_bytes: int = Field(
        default=64 * 1024, ge=1, validation_alias=f"{PREFIX}KAFKA_FETCH_MIN_BYTES"
    )
    """How much data a consumer's fetch asks the broker to gather before it answers (waiting
    ``fetch_max_wait_ms`` at most): under a steady stream each fetch carries many records
    instead of one or two, so the broker answers far fewer requests and every hop handles
    bigger batches (bench/normalize at 400 webhooks/s: a bare consume+produce hop 638 -> 204 µs
    CPU a webhook, the broker 3.2 -> 1.8 ms). 1: answer as soon as anything is there."""
    fetch_max_wait_ms: int = Field(
        default=50, ge=0, validation_alias=f"{PREFIX}KAFKA_FETCH_MAX_WAIT_MS"
    )
    """How long the broker may hold a fetch for ``fetch_min_bytes``: what a record may wait at
    each hop for others to join it when the stream is slow (a busy stream fills the fetch
    first), and how often an idle consumer asks again (was aiokafka's 500: an idle consumer
    now costs a fetch every 50 ms)."""
    compression: Literal["none", "lz4", "zstd"] = Field(
        default="lz4", validation_alias=f"{PREFIX}KAFKA_COMPRESSION"
    )
    request_timeout_ms: int = Field(
        default=5000, validation_alias=f"{PREFIX}KAFKA_REQUEST_TIMEOUT_MS"
    )
    session_timeout_ms: int = Field(
        default=10_000, ge=1000, validation_alias=f"{PREFIX}KAFKA_SESSION_TIMEOUT_MS"
    )
    """How long a group member that stopped heartbeating (killed, partitioned) keeps its
    partitions before the group reassigns them (aiokafka consumers; heartbeats every third of
    it). The broker accepts 6 s to 30 min by default (``group.min/max.session.timeout.ms``)."""


class PostgresSettings(BaseBlametrailSettings):
    """How to reach Postgres."""

    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:55432/blametrail",
        validation_alias=AliasChoices(f"{PREFIX}DATABASE_URL", "DATABASE_URL"),
    )


class LogSettings(BaseBlametrailSettings):
    """Logging: JSON lines on stderr."""

    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"


class RunnerSettings(BaseBlametrailSettings):
    """How a consumer service stops (see :func:`blametrail_common.runner.run_with_health`)."""

    shutdown_grace_s: float = Field(default=120.0, validation_alias=f"{PREFIX}SHUTDOWN_GRACE_S")
    """After SIGTERM, how long the batch in hand may take before it is cancelled (and
    redelivered). Keep it below the pod's terminationGracePeriodSeconds."""


class GcSettings(BaseBlametrailSettings):
    """The cyclic garbage collector of a service process (:func:`~blametrail_common.gctune.tune_gc`)."""

    gc_thresholds: str = Field(default="50000,20,10", validation_alias=f"{PREFIX}GC_THRESHOLDS")
    """``gc.set_threshold``'s three numbers, comma-separated; empty: Python's own (700,10,10)."""
    gc_freeze: bool = Field(default=True, validation_alias=f"{PREFIX}GC_FREEZE")
    """Move what start-up made (modules, schemas, settings) out of the collector's reach."""


class SecretsSettings(BaseBlametrailSettings):
    """Key used to encrypt secrets at rest and on the connections topic (Fernet, urlsafe base64).

    Several keys may be given, comma-separated: the first encrypts, all decrypt (key rotation).
    """

    secret_keys: SecretStr = Field(default=SecretStr(""), validation_alias=f"{PREFIX}SECRET_KEYS")
