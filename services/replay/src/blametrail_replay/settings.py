"""Replay settings (environment, prefix ``BLAMETRAIL_REPLAY_``)."""

from __future__ import annotations

from blametrail_common.settings import PREFIX, BaseBlametrailSettings
from pydantic import Field

__all__ = ["ReplaySettings"]


class ReplaySettings(BaseBlametrailSettings):
    # Distinct keys (incidents, their enrichments, suspects, links) a rebuild folds in memory,
    # about 0.5 KB each; past it the rebuild loads what it folded and applies the rest of the
    # log as the live projection does (slower, same rows).
    fold_max_incidents: int = Field(
        default=1_000_000, ge=1, validation_alias=f"{PREFIX}REPLAY_FOLD_MAX_INCIDENTS"
    )
    # Processes the fold runs in, each folding the records of a share of the log's record keys
    # (the fold is CPU in Python: one process folds at one core's speed); 0: in the rebuild's
    # own process.
    fold_workers: int = Field(
        default=2, ge=0, le=64, validation_alias=f"{PREFIX}REPLAY_FOLD_WORKERS"
    )
