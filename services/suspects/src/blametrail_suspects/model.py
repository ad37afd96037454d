"""The values suspect scoring works on: deploys, incident facts, signals and suspects.

Plain frozen dataclasses: no validation cost in the scoring loop. Adapters build them from events
(:mod:`blametrail_suspects.facts`) or API payloads; pydantic stays at those boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Literal

from blametrail_suspects.paths import PathKey
from blametrail_suspects.paths import path_keys as keys_of

__all__ = [
    "Deploy",
    "IncidentFacts",
    "IssueKind",
    "Signal",
    "SignalName",
    "Suspect",
    "normalise_env",
    "release_parts",
]

SignalName = Literal["release", "time", "environment", "frames", "committer"]
IssueKind = Literal["new", "regressed", "other"]
_ENV_ALIASES = {"prod": "production", "stage": "staging", "stg": "staging", "dev": "development"}


def normalise_env(name: str | None) -> str | None:
    """Environment names compared case-insensitively, with common short forms expanded."""
    key = (name or "").strip().lower()
    return _ENV_ALIASES.get(key, key) or None


def release_parts(release: str) -> tuple[str | None, str]:
    """``(package, version)`` of a Sentry release: ``"cart@1.2"`` or ``"1.2"`` (no package)."""
    package, at, version = release.strip().rpartition("@")
    return (package or None, version) if at and package else (None, release.strip())


@dataclass(frozen=True)
class Deploy:
    """One deploy of a service. Times are timezone-aware; at least one of them is set.

    ``finished_at=None`` means still rolling out (or never reported finished). ``changed_paths``
    are repo-relative; ``None`` means unknown, ``()`` means known to change no file.
    """

    id: str
    service: str
    version: str | None
    environment: str | None
    commit_sha: str | None
    started_at: datetime | None
    finished_at: datetime | None
    author: str | None = None
    url: str | None = None
    changed_paths: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        times = [t for t in (self.started_at, self.finished_at) if t is not None]
        if not times:
            raise ValueError(f"deploy {self.id}: started_at or finished_at is required")
        if any(t.tzinfo is None for t in times):
            raise ValueError(f"deploy {self.id}: times must be timezone-aware")

    # Derived once per deploy and reused for every incident it is a candidate of.
    @cached_property
    def start_ts(self) -> float:
        start = self.started_at or self.finished_at
        assert start is not None  # __post_init__ guarantees one of them
        return start.timestamp()

    @cached_property
    def finish_ts(self) -> float | None:
        return None if self.finished_at is None else self.finished_at.timestamp()

    @cached_property
    def env_key(self) -> str | None:
        return normalise_env(self.environment)

    @cached_property
    def version_parts(self) -> tuple[str | None, str] | None:
        return None if not self.version else release_parts(self.version)

    @cached_property
    def path_keys(self) -> frozenset[PathKey] | None:
        return None if self.changed_paths is None else keys_of(self.changed_paths)


@dataclass(frozen=True)
class IncidentFacts:
    """What scoring needs to know about an incident (see :mod:`blametrail_suspects.facts`).

    ``in_app_files`` has one entry per in-app frame, the crashing frame first.
    ``suspect_commits``/``suspect_authors`` are Sentry's suspect committers, when available.
    """

    services: tuple[str, ...]
    first_seen: datetime
    release: str | None = None
    environment: str | None = None
    substatus: str | None = None
    in_app_files: tuple[str, ...] = ()
    suspect_commits: tuple[str, ...] | None = None
    suspect_authors: tuple[str, ...] | None = None

    @property
    def kind(self) -> IssueKind:
        status = (self.substatus or "").lower()
        return "new" if status == "new" else "regressed" if status == "regressed" else "other"


@dataclass(frozen=True, slots=True)
class Signal:
    """One signal of one suspect.

    ``weight`` is the share of the score this signal carries for this incident (the weights of
    the signals the incident provides, renormalised to sum to 1); ``contribution`` is
    ``weight * value``. ``imputed``: the deploy lacked the data and ``value`` is the prior.
    """

    name: SignalName
    value: float
    weight: float
    contribution: float
    imputed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Suspect:
    """A ranked candidate: ``score`` in [0, 1] is the sum of its signals' contributions."""

    deploy: Deploy
    score: float
    signals: tuple[Signal, ...]
    explain: str
