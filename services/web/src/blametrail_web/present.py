"""Pure: how the API's data is shown (no I/O, no Starlette): times, the stacktrace's order and
grouping, labels. Templates call these as filters and globals; no business rule lives in a
template."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from markupsafe import Markup

__all__ = [
    "FILTERS",
    "GLOBALS",
    "FrameGroup",
    "frame_groups",
    "parse_time",
    "severity_badge",
    "since_param",
    "status_badge",
    "time_tag",
    "utc_text",
]

SINCE_CHOICES: dict[str, tuple[str, timedelta | None]] = {
    "": ("Any time", None),
    "1h": ("Last hour", timedelta(hours=1)),
    "24h": ("Last 24 hours", timedelta(hours=24)),
    "7d": ("Last 7 days", timedelta(days=7)),
    "30d": ("Last 30 days", timedelta(days=30)),
}

STATUS_WORDS = {
    "open": "Open",
    "acknowledged": "Acknowledged",
    "resolved": "Resolved",
    "muted": "Muted",
    "ignored": "Ignored",
}

REASON_WORDS = {
    "unmapped": "No mapping for this project",
    "inactive": "Mapping inactive",
    "unknown_connection": "Unknown connection",
    "uninstalled": "Integration uninstalled",
    "unsupported": "Not an incident event",
    "invalid_payload": "Malformed webhook",
}


def parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def utc_text(value: Any) -> str:
    """``2024-05-01 12:00:03 UTC`` (what the viewer sees before the script shows local time,
    and on hover after); the raw value when it is not a time."""
    at = parse_time(value)
    if at is None:
        return "" if value is None else str(value)
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(value: Any) -> str:
    at = parse_time(value)
    return "" if at is None else at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def since_param(choice: str | None, now: datetime) -> str | None:
    """The API's ``since`` for a time filter choice (``24h``), or None for any time/unknown."""
    span = SINCE_CHOICES.get(choice or "", ("", None))[1]
    return None if span is None else (now - span).isoformat()


@dataclass
class FrameGroup:
    """In-app frames one by one; consecutive library frames together (collapsed)."""

    in_app: bool
    frames: list[dict[str, Any]] = field(default_factory=list)


def frame_groups(exception: dict[str, Any]) -> list[FrameGroup]:
    """Frames newest first (Sentry stores the crashing frame last), each marked ``crashing``
    for the first one; runs of non-app frames grouped so the page can fold them."""
    frames = list(reversed(exception.get("frames") or []))
    groups: list[FrameGroup] = []
    for i, frame in enumerate(frames):
        shown = {**frame, "crashing": i == 0}
        in_app = bool(frame.get("in_app"))
        if in_app or i == 0 or not groups or groups[-1].in_app:
            groups.append(FrameGroup(in_app or i == 0, [shown]))
        else:
            groups[-1].frames.append(shown)
    return groups


def frame_place(frame: dict[str, Any]) -> str:
    where = frame.get("filename") or frame.get("module") or frame.get("abs_path") or "?"
    line = frame.get("line_no")
    return f"{where}:{line}" if line is not None else str(where)


def percent(value: Any) -> str:
    try:
        return f"{float(value) * 100:.0f}%"
    except (TypeError, ValueError):
        return ""


def number(value: Any) -> str:
    try:
        return f"{float(value):.2f}"
    except (TypeError, ValueError):
        return ""


def status_word(value: Any) -> str:
    return STATUS_WORDS.get(str(value), str(value).capitalize())


def reason_word(value: Any) -> str:
    return REASON_WORDS.get(str(value), str(value).replace("_", " ").capitalize())


def short(value: Any, limit: int = 120) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


TIME_TAG = Markup('<time datetime="%s" title="%s">%s</time>')
NO_TIME = Markup('<span class="muted">—</span>')
STATUS_BADGE = Markup('<span class="badge status-%s">%s</span>')
SEVERITY_BADGE = Markup('<span class="badge sev sev-%s">%s</span>')


def time_tag(value: Any) -> Markup:
    """``<time datetime=ISO title=UTC>UTC</time>`` (the script shows it in local time), or a
    muted dash for no time. A filter, not a macro: it is shown on every row of a list. The
    values are escaped by ``Markup``'s ``%`` (it escapes every argument)."""
    if not value:
        return NO_TIME
    at = parse_time(value)
    if at is None:
        return TIME_TAG % ("", value, value)
    at = at.astimezone(UTC)
    stamp = at.strftime("%Y-%m-%d %H:%M:%S UTC")
    return TIME_TAG % (at.isoformat().replace("+00:00", "Z"), stamp, stamp)


def status_badge(value: Any) -> Markup:
    return STATUS_BADGE % (value, status_word(value))


def severity_badge(value: Any) -> Markup:
    return SEVERITY_BADGE % (value, str(value).upper())


FILTERS = {
    "utc": utc_text,
    "iso": iso,
    "frame_place": frame_place,
    "percent": percent,
    "number": number,
    "status_word": status_word,
    "reason_word": reason_word,
    "short": short,
    "time_tag": time_tag,
    "status_badge": status_badge,
    "severity_badge": severity_badge,
}
GLOBALS = {"since_choices": SINCE_CHOICES, "frame_groups": frame_groups}
