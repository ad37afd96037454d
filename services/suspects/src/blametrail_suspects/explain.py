"""Pure: the words for each signal and the one-sentence ``explain`` of a suspect. No IO.

Only the suspects returned are explained, never every candidate, so this is off the hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Final

from blametrail_suspects.model import Deploy, Signal, SignalName
from blametrail_suspects.signals import Context

__all__ = ["DETAILS", "duration", "explain"]

Detail = Callable[[Context, Deploy, float | None], str]


def duration(seconds: float) -> str:
    """``"under a minute"``, ``"7 min"``, ``"2 h 5 min"``, ``"3 d 4 h"``."""
    minutes = int(seconds // 60)
    if minutes < 1:
        return "under a minute"
    if minutes < 90:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def label(d: Deploy) -> str:
    return f"{d.service}@{d.version}" if d.version else f"{d.service} deploy {d.id}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _release(ctx: Context, d: Deploy, value: float | None) -> str:
    if value is None:
        return "deploy has no version"
    if value == 1.0:
        return f"released in {ctx.facts.release}"
    if value:
        return f"went out before {ctx.facts.release}, so its code ran in it"
    if d.version is None:
        return f"not in the event's release {ctx.facts.release}"
    return f"event release {ctx.facts.release} is not {d.version}"


def _time(ctx: Context, d: Deploy, value: float | None) -> str:
    if d.start_ts > ctx.first_seen:
        return f"started {duration(d.start_ts - ctx.first_seen)} after first seen"
    gap = ctx.first_seen - ctx.end_ts(d)
    if gap <= 0:
        return "rolling out when first seen"
    return f"deployed {duration(gap)} before first seen"


def _environment(ctx: Context, d: Deploy, value: float | None) -> str:
    if value is None:
        return "deploy environment unknown"
    where = f"deployed to {d.environment}"
    return where if value else f"{where}, incident in {ctx.facts.environment}"


def _frames(ctx: Context, d: Deploy, value: float | None) -> str:
    if value is None or d.path_keys is None:
        return "changed paths unknown"
    hits = ctx.frame_hits(d)
    if not hits.frames:
        return f"no in-app frame touches its {_plural(len(d.path_keys), 'changed file')}"
    verb = "touches" if hits.frames == 1 else "touch"
    text = f"{_plural(hits.frames, 'in-app frame')} {verb} changed files"
    if hits.crash:
        text += ", the crashing frame among them"
    shared = hits.files - hits.only_here
    if shared:
        text += f" ({_plural(shared, 'file')} also changed by other candidates)"
    return text


def _committer(ctx: Context, d: Deploy, value: float | None) -> str:
    if value is None:
        return "deploy has no commit or author"
    if value == 1.0:
        return f"head commit {(d.commit_sha or '')[:7]} is a suspect commit"
    if value:
        return f"deployed by suspect committer {d.author}"
    return "no suspect committer"


DETAILS: Final[Mapping[SignalName, Detail]] = MappingProxyType(
    {
        "release": _release,
        "time": _time,
        "environment": _environment,
        "frames": _frames,
        "committer": _committer,
    }
)


_WORTH_SAYING: Final[Mapping[SignalName, Callable[[Signal], bool]]] = MappingProxyType(
    {
        "frames": lambda s: True,
        "committer": lambda s: not s.imputed and s.value > 0,
        "environment": lambda s: not s.imputed and s.value == 0,
        "release": lambda s: s.imputed or s.value < 1.0,
    }
)
"""Beyond what and when: which signals the sentence mentions, in this order."""


def explain(ctx: Context, d: Deploy, signals: Sequence[Signal]) -> str:
    """One sentence a person can read, e.g. ``released in checkout-api@2.14.0 deployed 7 min
    before first seen; 3 in-app frames touch changed files``: what was released and when, then
    the evidence for (code, committer) and against (environment, release) it."""
    by_name = {s.name: s for s in signals}
    release = by_name.get("release")
    matched = release is not None and release.value == 1.0 and not release.imputed
    head = release.detail if release is not None and matched else label(d)
    parts = [f"{head} {_time(ctx, d, None)}"]
    for name, worth in _WORTH_SAYING.items():
        s = by_name.get(name)
        if s is not None and worth(s):
            parts.append(s.detail)
    return "; ".join(parts)
