"""Pure: Sentry API responses -> an enrichment record, size-bounded. No I/O here.

Sentry's event API is loosely typed (nulls anywhere, fields added over time), so every read is
defensive: a missing or odd field gives ``None``, never an exception.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from blametrail_common.events import encode, new_event
from blametrail_common.events.enrichment import (
    Breadcrumb,
    ExceptionInfo,
    IncidentEnrichedV1,
    ReleaseInfo,
    StackFrame,
    TagSummary,
    TagValue,
    UserContext,
)

__all__ = ["IncidentRef", "Limits", "build_record"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that keep a record small whatever Sentry returns."""

    breadcrumbs: int = 30
    nesting: int = 16  # free-form objects (contexts, geo, breadcrumb data) deeper than this: cut
    frames_per_exception: int = 50
    context_lines: int = 7
    string_chars: int = 2048
    top_tag_values: int = 5
    max_bytes: int = 256 * 1024


@dataclass(frozen=True, slots=True)
class IncidentRef:
    incident_id: str
    tenant_id: str
    connection_id: str
    sentry_issue_id: str


def build_record(
    ref: IncidentRef,
    event: Mapping[str, Any],
    tags: Sequence[Mapping[str, Any]],
    fetched_at: datetime,
    limits: Limits = Limits(),
) -> IncidentEnrichedV1:
    """The record for ``ref`` from the latest-event and issue-tags responses."""
    cut: list[str] = []
    entries = {
        e.get("type"): e.get("data") or {}
        for e in _list(event.get("entries"))
        if isinstance(e, dict)
    }
    event_tags = [
        (_s(str(t.get("key")), limits) or "", _s(t.get("value"), limits) or "")
        for t in _list(event.get("tags"))
        if isinstance(t, dict)
    ]
    tag_map = dict(event_tags)
    crumbs = [_breadcrumb(b, limits) for b in _list(_get(entries.get("breadcrumbs"), "values"))]
    if len(crumbs) > limits.breadcrumbs:
        cut.append(f"breadcrumbs:{len(crumbs)}->{limits.breadcrumbs}")
        crumbs = crumbs[-limits.breadcrumbs :]
    record = IncidentEnrichedV1(
        incident_id=ref.incident_id,
        tenant_id=ref.tenant_id,
        connection_id=ref.connection_id,
        sentry_issue_id=ref.sentry_issue_id,
        sentry_event_id=_s(event.get("eventID") or event.get("id"), limits),
        fetched_at=fetched_at,
        title=_s(event.get("title"), limits),
        message=_s(event.get("message"), limits),
        platform=_s(event.get("platform"), limits),
        environment=tag_map.get("environment"),
        release=_release(event.get("release"), tag_map.get("release"), limits),
        tags=[_tag_summary(t, limits) for t in _list(tags) if isinstance(t, dict)],
        event_tags=event_tags,
        exceptions=[
            _exception(v, limits, cut)
            for v in _list(_get(entries.get("exception"), "values"))
            if isinstance(v, dict)
        ],
        breadcrumbs=crumbs,
        user=_user(event.get("user"), limits),
        contexts={
            k: _nested(v, limits)
            for k, v in (_dict(event.get("contexts")) or {}).items()
            if isinstance(v, dict)
        },
        event_created_at=_s(event.get("dateCreated"), limits),
        event_received_at=_s(event.get("dateReceived"), limits),
        links=_links(event, entries, limits),
        truncated=_markers(cut),
    )
    return _bound(record, limits)


def _bound(record: IncidentEnrichedV1, limits: Limits) -> IncidentEnrichedV1:
    """Shed the bulkiest parts, in order, until the encoded record fits ``max_bytes``."""
    steps: tuple[tuple[str, Callable[[IncidentEnrichedV1], dict[str, Any]]], ...] = (
        (
            "breadcrumb_data",
            lambda r: {"breadcrumbs": [b.model_copy(update={"data": None}) for b in r.breadcrumbs]},
        ),
        (
            "frame_context",
            lambda r: {
                "exceptions": [
                    e.model_copy(
                        update={"frames": [f.model_copy(update={"context": []}) for f in e.frames]}
                    )
                    for e in r.exceptions
                ]
            },
        ),
        ("contexts", lambda r: {"contexts": {}}),
        ("breadcrumbs", lambda r: {"breadcrumbs": []}),
        (
            "frames",
            lambda r: {
                "exceptions": [e.model_copy(update={"frames": e.frames[-5:]}) for e in r.exceptions]
            },
        ),
        ("tags", lambda r: {"tags": [], "event_tags": r.event_tags[:20]}),
        ("user_geo", lambda r: {"user": r.user and r.user.model_copy(update={"geo": None})}),
        # what is left is bounded in length but not in number (exceptions, tags of the event)
        ("exceptions", lambda r: {"exceptions": r.exceptions[-1:], "event_tags": []}),
        ("everything", _identity_only),
    )
    for marker, shed in steps:
        if _size(record) <= limits.max_bytes:
            break
        record = record.model_copy(
            update={**shed(record), "truncated": [*record.truncated, marker]}
        )
    return record


def _markers(cut: list[str], keep: int = 20) -> list[str]:
    """What was cut, bounded in number too (one marker an exception with too many frames)."""
    return cut if len(cut) <= keep else [*cut[:keep], f"markers:{len(cut)}->{keep}"]


def _identity_only(_: IncidentEnrichedV1) -> dict[str, Any]:
    """The last resort: which event it was and its few texts (each at most ``string_chars``)."""
    return {
        "release": None,
        "tags": [],
        "event_tags": [],
        "exceptions": [],
        "breadcrumbs": [],
        "user": None,
        "contexts": {},
        "links": {},
    }


def _size(record: IncidentEnrichedV1) -> int:
    return len(encode(new_event(record, key=record.incident_id, event_id=None)))


def _exception(value: Mapping[str, Any], limits: Limits, cut: list[str]) -> ExceptionInfo:
    mechanism = _dict(value.get("mechanism")) or {}
    raw_frames = _list(_get(value.get("stacktrace"), "frames"))
    frames = [_frame(f, limits) for f in raw_frames if isinstance(f, dict)]
    omitted = 0
    if len(frames) > limits.frames_per_exception:
        omitted = len(frames) - limits.frames_per_exception
        cut.append(f"frames:{len(frames)}->{limits.frames_per_exception}")
        frames = frames[-limits.frames_per_exception :]  # keep the crashing end
    return ExceptionInfo(
        type=_s(value.get("type"), limits),
        value=_s(value.get("value"), limits),
        module=_s(value.get("module"), limits),
        mechanism=_s(mechanism.get("type"), limits),
        handled=mechanism.get("handled") if isinstance(mechanism.get("handled"), bool) else None,
        frames=frames,
        frames_omitted=omitted,
    )


def _frame(frame: Mapping[str, Any], limits: Limits) -> StackFrame:
    context = [
        (int(c[0]), _s(c[1], limits) or "")
        for c in _list(frame.get("context"))
        if isinstance(c, list | tuple) and len(c) == 2 and isinstance(c[0], int)
    ]
    line = frame.get("lineNo")
    if len(context) > limits.context_lines and isinstance(line, int):
        context.sort(key=lambda c: abs(c[0] - line))
        context = sorted(context[: limits.context_lines])
    return StackFrame(
        filename=_s(frame.get("filename"), limits),
        abs_path=_s(frame.get("absPath"), limits),
        module=_s(frame.get("module"), limits),
        function=_s(frame.get("function"), limits),
        line_no=line if isinstance(line, int) else None,
        col_no=frame.get("colNo") if isinstance(frame.get("colNo"), int) else None,
        in_app=frame.get("inApp") is True,
        context=context,
    )


def _breadcrumb(crumb: Any, limits: Limits) -> Breadcrumb:
    c = _dict(crumb) or {}
    return Breadcrumb(
        timestamp=_s(c.get("timestamp"), limits),
        type=_s(c.get("type"), limits),
        category=_s(c.get("category"), limits),
        level=_s(c.get("level"), limits),
        message=_s(c.get("message"), limits),
        data=_nested_dict(c.get("data"), limits),
    )


def _tag_summary(tag: Mapping[str, Any], limits: Limits) -> TagSummary:
    top = [
        TagValue(
            value=_s(v.get("value"), limits) or "",
            count=v.get("count") if isinstance(v.get("count"), int) else 0,
            first_seen=_s(v.get("firstSeen"), limits),
            last_seen=_s(v.get("lastSeen"), limits),
        )
        for v in _list(tag.get("topValues"))[: limits.top_tag_values]
        if isinstance(v, dict)
    ]
    total = tag.get("totalValues")
    return TagSummary(
        key=_s(str(tag.get("key")), limits) or "",
        name=_s(str(tag.get("name") or tag.get("key")), limits) or "",
        total_values=total if isinstance(total, int) else 0,
        top_values=top,
    )


def _user(user: Any, limits: Limits) -> UserContext | None:
    u = _dict(user)
    if not u:
        return None
    return UserContext(
        id=_s(u.get("id"), limits),
        email=_s(u.get("email"), limits),
        username=_s(u.get("username"), limits),
        ip_address=_s(u.get("ip_address"), limits),
        name=_s(u.get("name"), limits),
        geo=_nested_dict(u.get("geo"), limits),
    )


def _release(release: Any, tag_version: str | None, limits: Limits) -> ReleaseInfo | None:
    r = _dict(release)
    if r and isinstance(r.get("version"), str):
        deploy = _dict(r.get("lastDeploy")) or {}
        return ReleaseInfo(
            version=_s(r["version"], limits) or "",
            date_released=_s(r.get("dateReleased"), limits),
            commit=_s(r.get("ref"), limits),
            last_deploy_environment=_s(deploy.get("environment"), limits),
            last_deploy_started=_s(deploy.get("dateStarted"), limits),
            last_deploy_finished=_s(deploy.get("dateFinished"), limits),
        )
    return ReleaseInfo(version=tag_version) if tag_version else None


def _links(event: Mapping[str, Any], entries: Mapping[Any, Any], limits: Limits) -> dict[str, str]:
    links = {}
    url = _get(entries.get("request"), "url")
    if isinstance(url, str):
        links["request_url"] = _s(url, limits) or ""
    for key in ("web_url", "permalink"):
        if isinstance(event.get(key), str):
            links[key] = _s(event[key], limits) or ""
    return links


def _s(value: Any, limits: Limits) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return (
        text if len(text) <= limits.string_chars else text[: limits.string_chars] + "…[truncated]"
    )


_TOO_DEEP = "…[nested too deep]"


def _nested(value: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """A copy of a free-form object of Sentry's whose objects and arrays deeper than
    ``limits.nesting`` are a marker: pydantic refuses to write JSON nested some 250 deep, which
    would fail every try at the record (its texts are shed by size, see ``_bound``)."""
    return _cut(value, limits.nesting)  # type: ignore[no-any-return]


def _nested_dict(value: Any, limits: Limits) -> dict[str, Any] | None:
    d = _dict(value)
    return None if d is None else _nested(d, limits)


def _cut(value: Any, depth: int) -> Any:
    if isinstance(value, dict):
        return {k: _cut(v, depth - 1) for k, v in value.items()} if depth > 0 else _TOO_DEEP
    if isinstance(value, list):
        return [_cut(v, depth - 1) for v in value] if depth > 0 else _TOO_DEEP
    return value


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _get(container: Any, key: str) -> Any:
    return container.get(key) if isinstance(container, dict) else None
