"""Settings of the jobs worker (environment, prefix ``BLAMETRAIL_JOBS_``)."""

from __future__ import annotations

from blametrail_common.settings import PREFIX, BaseBlametrailSettings
from pydantic import Field

__all__ = ["JobWorkerSettings"]


class JobWorkerSettings(BaseBlametrailSettings):
    host: str = Field(default="127.0.0.1", validation_alias=f"{PREFIX}JOBS_HOST")
    port: int = Field(default=8091, validation_alias=f"{PREFIX}JOBS_PORT")
    # a NOTIFY wakes the worker at once; this poll finds jobs whose NOTIFY was missed and
    # running jobs whose worker died
    poll_s: float = Field(default=5.0, gt=0, validation_alias=f"{PREFIX}JOBS_POLL_S")
    # heartbeat and progress written this often while a job runs (a few times a second at most)
    heartbeat_s: float = Field(default=1.0, ge=0.2, validation_alias=f"{PREFIX}JOBS_HEARTBEAT_S")
    # a running job without a heartbeat for this long lost its worker: taken over, run again
    stale_after_s: float = Field(default=30.0, gt=0, validation_alias=f"{PREFIX}JOBS_STALE_AFTER_S")
    # runs per job (a worker that dies on every run of a job stops there: the job is failed)
    max_attempts: int = Field(default=3, ge=1, validation_alias=f"{PREFIX}JOBS_MAX_ATTEMPTS")
    # how long a reprocess job waits for the project's mapping to reach cp-mappings (the
    # control plane's outbox relay publishes it right after it is saved) before failing
    mapping_wait_s: float = Field(
        default=15.0, ge=0, validation_alias=f"{PREFIX}JOBS_MAPPING_WAIT_S"
    )
