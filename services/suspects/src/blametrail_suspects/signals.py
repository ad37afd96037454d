"""Pure: the value of each signal for one candidate deploy, in [0, 1] or ``None`` when the
deploy lacks the data. Definitions are in :mod:`blametrail_suspects.scoring`'s docstring.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, NamedTuple

from blametrail_suspects.model import Deploy, IncidentFacts, SignalName
from blametrail_suspects.paths import PathKey

__all__ = [
    "MIN_SHA",
    "RELEASE_ANCESTOR",
    "SIGNALS",
    "Context",
    "FrameHits",
    "SignalFn",
    "is_release",
]

MIN_SHA: Final = 7
"""Shortest commit sha prefix that counts as a match."""
_AUTHOR_MATCH = 0.6
RELEASE_ANCESTOR: Final = 0.5
"""Release value of a deploy that finished before the release's deploy: its code ran too."""


class FrameHits(NamedTuple):
    """How a deploy's changed paths meet the incident's in-app frames."""

    evidence: float
    """Sum over the frame files it changed of their share, the crashing frame's twice."""
    frames: int
    files: int
    only_here: int
    """Files no other candidate changed."""
    crash: bool


@dataclass(slots=True)
class Context:
    """Per-incident values computed once, shared by every candidate."""

    facts: IncidentFacts
    first_seen: float
    now: float
    half_life: float
    release: tuple[str | None, str] | None
    env: str | None
    frame_keys: tuple[PathKey, ...]
    """One per in-app frame, the crashing frame first."""
    package_is_service: bool
    """The release names its package after one of the incident's services (``cart@1.2``)."""
    shas: tuple[str, ...]
    authors: frozenset[str]
    frame_share: dict[PathKey, float] = field(default_factory=dict)
    """Per frame file, 1 / the number of candidates (changed paths known) that changed it."""
    release_started: dict[str, float] = field(default_factory=dict)
    """Per service, when the event's release started deploying in the incident's environment."""

    def same_env(self, d: Deploy) -> bool:
        """Environments agree or one is unknown."""
        return self.env is None or d.env_key is None or d.env_key == self.env

    def end_ts(self, d: Deploy) -> float:
        return d.finish_ts if d.finish_ts is not None else max(d.start_ts, self.now)

    def frame_hits(self, d: Deploy) -> FrameHits:
        keys = d.path_keys or frozenset()
        files = {k for k in self.frame_share if k in keys}
        crash = bool(files) and self.frame_keys[0] in files
        evidence = sum(self.frame_share[k] for k in files)
        return FrameHits(
            evidence=evidence + (self.frame_share[self.frame_keys[0]] if crash else 0.0),
            frames=sum(k in files for k in self.frame_keys),
            files=len(files),
            only_here=sum(self.frame_share[k] == 1.0 for k in files),
            crash=crash,
        )


SignalFn = Callable[[Context, Deploy], float | None]


def is_release(ctx: Context, d: Deploy) -> bool:
    """Whether ``d`` deployed the event's release."""
    ours, theirs = ctx.release, d.version_parts
    if theirs is None or ours is None:
        return False
    package = theirs[0] or (d.service if ctx.package_is_service else None)
    return (ours[0] is None or package is None or ours[0] == package) and ours[1] == theirs[1]


def _release(ctx: Context, d: Deploy) -> float | None:
    if is_release(ctx, d):
        return 1.0
    anchor = ctx.release_started.get(d.service)
    if anchor is not None and ctx.same_env(d):
        return RELEASE_ANCESTOR if ctx.end_ts(d) <= anchor else 0.0
    return None if d.version_parts is None else 0.0


def _time(ctx: Context, d: Deploy) -> float:
    if d.start_ts > ctx.first_seen:
        return 0.0
    gap = ctx.first_seen - ctx.end_ts(d)
    return 1.0 if gap <= 0 else 0.5 ** (gap / ctx.half_life)


def _environment(ctx: Context, d: Deploy) -> float | None:
    return None if d.env_key is None else float(d.env_key == ctx.env)


def _frames(ctx: Context, d: Deploy) -> float | None:
    if d.path_keys is None:
        return None
    return 1.0 - float(0.5 ** ctx.frame_hits(d).evidence)


def _committer(ctx: Context, d: Deploy) -> float | None:
    sha, author = (d.commit_sha or "").lower(), (d.author or "").lower()
    if not sha and not author:
        return None
    if len(sha) >= MIN_SHA and any(s.startswith(sha) or sha.startswith(s) for s in ctx.shas):
        return 1.0
    return _AUTHOR_MATCH if author in ctx.authors else 0.0


SIGNALS: Final[Mapping[SignalName, SignalFn]] = MappingProxyType(
    {
        "release": _release,
        "time": _time,
        "environment": _environment,
        "frames": _frames,
        "committer": _committer,
    }
)
