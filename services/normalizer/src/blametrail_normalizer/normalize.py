"""Pure normalization rules: one raw Sentry webhook -> incident events and/or an audit record.

No I/O; see ``app.py`` for the wiring. Deterministic: the same webhook and the same tables give
the same events, ids and all (output ids derive from the raw event id), so replays overwrite.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from blametrail_common import jsontext
from blametrail_common.events import (
    ConnectionStateV1,
    Envelope,
    WebhookReceivedV1,
    new_event,
)
from blametrail_common.events.audit import AuditReason, WebhookAuditedV1
from blametrail_common.events.incidents import (
    Assignee,
    IncidentAssignedV1,
    IncidentEvent,
    IncidentMutedV1,
    IncidentOpenedV1,
    IncidentReopenedV1,
    IncidentResolvedV1,
    IncidentUpdatedV1,
    IssueSnapshot,
    SentryRef,
    Severity,
    incident_id_for,
    severity_for_level,
)
from blametrail_common.events.installations import (
    SentryInstallationSeenV1,
    SentryInstallationV1,
)
from blametrail_common.text import scrub_surrogates

from blametrail_normalizer.lookup import Lookup

__all__ = ["Normalized", "normalize"]

_PROJECT_IN_URL = re.compile(r"/projects/(?P<org>[^/]+)/(?P<project>[^/]+)/events/")
_SEVERITIES = {"sev1", "sev2", "sev3", "sev4", "sev5"}
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # the JSON escape of one: \ud800-\udfff


@dataclass(frozen=True)
class Normalized:
    """Output of :func:`normalize`: events per registry topic, and facts learnt on the way."""

    events: list[tuple[str, Envelope[Any]]] = field(default_factory=list)
    learned_projects: list[tuple[str, str, str]] = field(
        default_factory=list
    )  # (connection, id, slug)
    opened: list[str] = field(default_factory=list)  # incident ids this output opens


class _Skip(Exception):
    def __init__(
        self, reason: AuditReason, detail: str, slug: str | None = None, pid: str | None = None
    ) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.slug, self.pid = reason, detail, slug, pid


@dataclass
class _Ctx:
    raw: Envelope[WebhookReceivedV1]
    lookup: Lookup
    conn: ConnectionStateV1 | None = None
    learned: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[_Skip] = field(default_factory=list)  # settings ignored, the incident still made

    def conn_tenant(self) -> str:
        assert self.conn is not None
        return self.conn.tenant_id

    @property
    def hook(self) -> WebhookReceivedV1:
        return self.raw.payload

    def status_at(self) -> datetime:
        """When Sentry sent this state: the hook timestamp (set per attempt), else receipt time."""
        ts = self.hook.hook_timestamp
        if ts and ts.isdigit():
            return datetime.fromtimestamp(int(ts), UTC)
        return self.hook.received_at


def normalize(raw: Envelope[WebhookReceivedV1], lookup: Lookup) -> Normalized:
    """Turn one raw webhook into events. Never raises for bad input: that becomes an audit record."""
    ctx = _Ctx(raw, lookup)
    try:
        doc = _parse(ctx)
        if ctx.hook.resource == "installation":
            return Normalized([("sentry-installations", _installation(ctx, doc))])
        ctx.conn = _connection(ctx)
        payloads = _route(ctx, doc)
    except _Skip as skip:
        return Normalized([("webhook-audit", _audit(ctx, skip)), *_seen(ctx)], ctx.learned)
    events = [("incident-events", _wrap(ctx, p, i)) for i, p in enumerate(payloads)]
    opened = [p.incident_id for p in payloads if isinstance(p, IncidentOpenedV1)]
    ignored = [
        ("webhook-audit", _audit(ctx, n, f"audit:setting:{i}")) for i, n in enumerate(ctx.notes)
    ]
    return Normalized([*events, *ignored, *_seen(ctx)], ctx.learned, opened)


def _seen(ctx: _Ctx) -> list[tuple[str, Envelope[Any]]]:
    """An internal connection's webhook naming an installation the connection does not know:
    told to the control plane, which records it (UI calls naming another are refused). Only a
    webhook that came to the connection's own URL (so signed with its secret) teaches."""
    conn, hook = ctx.conn, ctx.hook
    inst = hook.installation_uuid
    if conn is None or conn.mode != "internal" or hook.connection_id != conn.connection_id:
        return []
    if not inst or len(inst) > 64 or inst == conn.installation_uuid or not conn.enabled:
        return []
    seen = SentryInstallationSeenV1(
        installation_uuid=inst,
        connection_id=conn.connection_id,
        raw_event_id=str(ctx.raw.id),
        received_at=hook.received_at,
    )
    event_id = uuid.uuid5(ctx.raw.id, "normalizer:installation-seen")
    at = hook.received_at
    env = new_event(
        seen, key=inst, tenant=conn.tenant_id, occurred_at=at, event_id=event_id, produced_at=at
    )
    return [("sentry-installations", env)]


def _parse(ctx: _Ctx) -> dict[str, Any]:
    if not ctx.hook.supported:
        raise _Skip(
            "unsupported", f"{ctx.hook.resource}.{ctx.hook.action} is not turned into incidents"
        )
    body = ctx.hook.body
    try:
        doc = jsontext.loads(body)  # json.loads, by orjson where the two agree
        if _may_hold_surrogate(body):
            doc = scrub_surrogates(doc)
    except (ValueError, RecursionError) as exc:
        raise _Skip(
            "invalid_payload", f"body is not parseable JSON: {type(exc).__name__}"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
        raise _Skip("invalid_payload", "body has no 'data' object")
    return doc


def _may_hold_surrogate(body: str) -> bool:
    """Whether the parsed ``body`` may hold a lone surrogate: the text holds one, or a JSON escape
    of one. Nearly no body does, and those need no scrubbing of their parsed values (a walk of
    the whole document, a tenth of the normalizer's CPU); a paired one is scrubbed for nothing."""
    if not body.isascii():
        try:
            body.encode()
        except UnicodeEncodeError:
            return True
    return "\\u" in body and _SURROGATE_ESCAPE.search(body) is not None


def _connection(ctx: _Ctx) -> ConnectionStateV1:
    conn = None
    if ctx.hook.connection_id:
        conn = ctx.lookup.connection(ctx.hook.connection_id)
    elif ctx.hook.installation_uuid:
        conn = ctx.lookup.connection_for_installation(ctx.hook.installation_uuid)
    if conn is None:
        raise _Skip("unknown_connection", "no connection for this webhook's URL or installation")
    if not conn.enabled:
        ctx.conn = conn  # the audit record belongs to the connection's tenant, who may look
        raise _Skip("uninstalled", "the connection is disabled")
    return conn


def _route(ctx: _Ctx, doc: dict[str, Any]) -> list[IncidentEvent]:
    resource, data = ctx.hook.resource, doc["data"]
    if resource == "issue":
        return _issue(ctx, doc.get("action"), data)
    if resource == "event_alert":
        return _event_alert(ctx, data)
    if resource == "metric_alert":
        return _metric_alert(ctx, doc.get("action"), data)
    raise _Skip("unsupported", f"{resource} webhooks do not create incidents")


# -- installation ------------------------------------------------------------------------------
def _installation(ctx: _Ctx, doc: dict[str, Any]) -> Envelope[Any]:
    """The control plane's copy of an installation webhook: it exchanges the grant of ``created``
    and disables the connection on ``deleted``. No connection is needed (there is none yet)."""
    inst = _obj(doc["data"].get("installation"))
    uuid_ = _str(inst.get("uuid")) or ctx.hook.installation_uuid
    action = doc.get("action")
    if not uuid_ or action not in ("created", "deleted"):
        raise _Skip("invalid_payload", "installation webhook without uuid or known action")
    record = SentryInstallationV1(
        installation_uuid=uuid_,
        action=action,
        sentry_org_slug=_str(_obj(inst.get("organization")).get("slug")),
        app_slug=_str(_obj(inst.get("app")).get("slug")),
        code=_str(inst.get("code")) if action == "created" else None,
        connection_id=ctx.hook.connection_id,
        raw_event_id=str(ctx.raw.id),
        received_at=ctx.hook.received_at,
    )
    return new_event(
        record,
        key=uuid_,
        occurred_at=ctx.status_at(),
        event_id=uuid.uuid5(ctx.raw.id, "normalizer:installation"),
        produced_at=ctx.hook.received_at,
    )


# -- issue -------------------------------------------------------------------------------------
def _issue(ctx: _Ctx, action: Any, data: dict[str, Any]) -> list[IncidentEvent]:
    issue = _obj(data.get("issue"))
    project = _obj(issue.get("project"))
    issue_id, slug, pid = _str(issue.get("id")), _str(project.get("slug")), _str(project.get("id"))
    if not issue_id or not slug:
        raise _Skip("invalid_payload", "issue webhook without issue id or project slug", slug, pid)
    primary = _primary(ctx, issue_id)
    if primary != issue_id:  # merged away in Sentry: the news is the primary's
        issue, issue_id = {**issue, "id": primary}, primary
    _learn(ctx, pid, slug)
    service_id = _mapped_service(ctx, slug, pid)
    common = _common(
        ctx,
        service_id,
        "sentry_issue",
        incident_id_for(ctx.conn_tenant(), "issue", issue_id),
        severity_for_level(_str(issue.get("level"))),
        _issue_ref(ctx, issue, slug, pid),
        _issue_snapshot(issue),
    )
    if action == "created":
        return [IncidentOpenedV1(**common)]
    _fresh(action, issue, slug, pid)
    if action == "resolved":
        return [IncidentResolvedV1(**common, resolution_type=_str(data.get("resolution_type")))]
    if action == "unresolved":
        return [IncidentReopenedV1(**common)]
    if action == "assigned":
        return [
            IncidentAssignedV1(
                **common, assignee=_assignee(data.get("assignee") or issue.get("assignedTo"))
            )
        ]
    if action in ("ignored", "archived"):
        details = {
            k: v
            for k, v in _obj(issue.get("statusDetails")).items()
            if isinstance(v, int | str | bool) or v is None
        }
        return [IncidentMutedV1(**common, details=details)]
    raise _Skip("unsupported", f"issue.{action} is not turned into incidents", slug, pid)


_STATE_OF_ACTION = {"resolved": "resolved", "unresolved": "unresolved"}


def _fresh(action: Any, issue: dict[str, Any], slug: str, pid: str | None) -> None:
    """Skip (audited ``stale``) a state webhook whose ``data.issue.status`` is another state than
    its action: Sentry re-serialises the body when it retries a delivery, so a retried
    ``issue.resolved`` of an issue reopened since shows ``unresolved`` under a new hook timestamp.
    The state change is dropped, not followed: the later change has its own webhook (and the
    reconciler's sweep finds one that was lost); following the body would date it wrongly."""
    expected = _STATE_OF_ACTION.get(action) if isinstance(action, str) else None
    status = _str(issue.get("status"))
    if expected is not None and status is not None and status != expected:
        raise _Skip(
            "stale", f"issue.{action} whose issue is {status[:40]} (a later retry)", slug, pid
        )


def _issue_ref(ctx: _Ctx, issue: dict[str, Any], slug: str, pid: str | None) -> SentryRef:
    assert ctx.conn is not None
    return SentryRef(
        connection_id=ctx.conn.connection_id,
        org_slug=ctx.conn.sentry_org_slug,
        project_id=pid,
        project_slug=slug,
        issue_id=_str(issue.get("id")),
        short_id=_str(issue.get("shortId")),
        web_url=_str(issue.get("web_url") or issue.get("permalink")),
        installation_uuid=ctx.hook.installation_uuid,
    )


def _issue_snapshot(issue: dict[str, Any]) -> IssueSnapshot:
    return IssueSnapshot(
        title=_str(issue.get("title")) or "(untitled Sentry issue)",
        culprit=_str(issue.get("culprit")),
        level=_str(issue.get("level")),
        status=_str(issue.get("status")),
        substatus=_str(issue.get("substatus")),
        platform=_str(issue.get("platform")),
        first_seen=_time(issue.get("firstSeen")),
        last_seen=_time(issue.get("lastSeen")),
        count=_int(issue.get("count")),
        user_count=_int(issue.get("userCount")),
    )


def _assignee(value: Any) -> Assignee | None:
    a = _obj(value)
    if not a or a.get("id") is None:
        return None
    return Assignee(
        type=_str(a.get("type")) or "user",
        id=str(a["id"]),
        name=_str(a.get("name")),
        email=_str(a.get("email")),
    )


# -- issue alerts ------------------------------------------------------------------------------
def _event_alert(ctx: _Ctx, data: dict[str, Any]) -> list[IncidentEvent]:
    event = _obj(data.get("event"))
    issue_id, pid = _str(event.get("issue_id")), _str(event.get("project"))
    issue_id = _primary(ctx, issue_id) if issue_id else issue_id
    found = _PROJECT_IN_URL.search(_str(event.get("url")) or "")
    slug = found["project"] if found else None
    if slug:
        _learn(ctx, pid, slug)
    elif pid and ctx.conn:
        slug = ctx.lookup.project_slug(ctx.conn.connection_id, pid)
    if not issue_id or not slug:
        raise _Skip(
            "unmapped" if issue_id else "invalid_payload",
            "alert for a project we cannot name",
            slug,
            pid,
        )
    settings = {
        s.get("name"): s.get("value")
        for s in _list(_obj(data.get("issue_alert")).get("settings"))
        if isinstance(s, dict)
    }
    environment = _str(event.get("environment"))
    wanted_env = _str(settings.get("environment"))
    if wanted_env and wanted_env != environment:
        raise _Skip(
            "environment_filtered",
            f"alert action wants {wanted_env!r}, event is {environment!r}",
            slug,
            pid,
        )
    service_id = _alert_service(ctx, slug, pid, _str(settings.get("service")))
    severity = _severity_setting(settings, ctx, slug, pid) or severity_for_level(
        _str(event.get("level"))
    )
    incident_id = incident_id_for(ctx.conn_tenant(), "issue", issue_id)
    assert ctx.conn is not None
    ref = SentryRef(
        connection_id=ctx.conn.connection_id,
        org_slug=ctx.conn.sentry_org_slug,
        project_id=pid,
        project_slug=slug,
        issue_id=issue_id,
        web_url=_str(event.get("web_url")),
        alert_rule=_str(data.get("triggered_rule")),
    )
    snapshot = IssueSnapshot(
        title=_str(event.get("title")) or "(untitled Sentry event)",
        culprit=_str(event.get("culprit")),
        level=_str(event.get("level")),
        platform=_str(event.get("platform")),
        last_seen=_time(event.get("datetime")),
        environment=environment,
        release=_str(event.get("release")),
    )
    common = _common(ctx, service_id, "sentry_issue", incident_id, severity, ref, snapshot)
    if ctx.lookup.incident_known(incident_id):
        return [IncidentUpdatedV1(**common, reason="alert_triggered")]
    return [IncidentOpenedV1(**common)]


def _alert_service(ctx: _Ctx, slug: str, pid: str | None, override: str | None) -> str:
    """The action's target service when it names one (a disabled mapping still pauses the
    project); the mapping's service otherwise."""
    assert ctx.conn is not None
    if not override:
        return _mapped_service(ctx, slug, pid)
    mapping = ctx.lookup.mapping(ctx.conn.connection_id, slug)
    if mapping is not None and not mapping.active:
        raise _Skip("inactive", f"mapping of {slug} is disabled", slug, pid)
    service = ctx.lookup.service(override)
    if service is None or service.tenant_id != ctx.conn.tenant_id:
        raise _Skip(
            "unknown_service", f"alert action targets unknown service {override}", slug, pid
        )
    return service.service_id


def _severity_setting(
    settings: dict[Any, Any],
    ctx: _Ctx | None = None,
    slug: str | None = None,
    pid: str | None = None,
) -> Severity | None:
    """The action's severity; one that is set but not ours is noted on ``ctx`` (audited)."""
    raw = settings.get("severity")
    value = _str(raw)
    if value in _SEVERITIES:
        return value  # type: ignore[return-value]
    if raw not in (None, "") and ctx is not None:
        shown = repr(raw)[:66]  # Sentry-provided: bounded
        ctx.notes.append(
            _Skip(
                "invalid_setting",
                f"alert action severity {shown} is not one of {', '.join(sorted(_SEVERITIES))};"
                " the incident got the default severity",
                slug,
                pid,
            )
        )
    return None


# -- metric alerts -----------------------------------------------------------------------------
def _metric_alert(ctx: _Ctx, action: Any, data: dict[str, Any]) -> list[IncidentEvent]:
    alert = _obj(data.get("metric_alert"))
    alert_id = _str(alert.get("id"))
    slugs = [s for s in _list(alert.get("projects")) if isinstance(s, str)]
    if not alert_id or not slugs:
        raise _Skip("invalid_payload", "metric alert without id or projects")
    assert ctx.conn is not None
    mappings = [(s, ctx.lookup.mapping(ctx.conn.connection_id, s)) for s in slugs]
    active = [(s, m) for s, m in mappings if m is not None and m.active]
    if not active:
        inactive = any(m is not None for _, m in mappings)
        raise _Skip(
            "inactive" if inactive else "unmapped", f"no active mapping for {slugs}", slugs[0]
        )
    slug, mapping = active[0]
    assert mapping is not None
    rule = _obj(alert.get("alert_rule"))
    settings = _trigger_settings(rule, action)
    severity = _severity_setting(settings, ctx, slug) or (
        "sev1" if action == "critical" else "sev3"
    )
    incident_id = incident_id_for(ctx.conn_tenant(), "metric_alert", alert_id)
    ref = SentryRef(
        connection_id=ctx.conn.connection_id,
        org_slug=ctx.conn.sentry_org_slug,
        project_slug=slug,
        metric_alert_id=alert_id,
        web_url=_str(data.get("web_url")),
        alert_rule=_str(rule.get("name")),
    )
    snapshot = IssueSnapshot(
        title=_str(alert.get("title")) or _str(data.get("description_title")) or "Metric alert",
        culprit=_str(data.get("description_text")),
        status=action if isinstance(action, str) else None,
        first_seen=_time(alert.get("date_started")),
        last_seen=_time(alert.get("date_detected")),
        environment=_str(rule.get("environment")),
    )
    common = _common(
        ctx, mapping.service_id, "sentry_metric_alert", incident_id, severity, ref, snapshot
    )
    if action == "resolved":
        return [IncidentResolvedV1(**common, resolution_type="metric_alert_resolved")]
    if action in ("critical", "warning", "open"):
        if ctx.lookup.incident_known(incident_id):
            return [IncidentUpdatedV1(**common, reason=f"metric_alert_{action}")]
        return [IncidentOpenedV1(**common)]
    raise _Skip("unsupported", f"metric_alert.{action} is not turned into incidents", slug)


def _trigger_settings(rule: dict[str, Any], action: Any) -> dict[Any, Any]:
    """Our action's settings on the trigger that fired (found by ``sentry_app`` type, not index)."""
    triggers = [t for t in _list(rule.get("triggers")) if isinstance(t, dict)]
    triggers.sort(key=lambda t: t.get("label") != action)
    for trigger in triggers:
        for act in _list(trigger.get("actions")):
            if isinstance(act, dict) and act.get("type") == "sentry_app" and act.get("settings"):
                return {
                    s.get("name"): s.get("value")
                    for s in _list(act["settings"])
                    if isinstance(s, dict)
                }
    return {}


# -- shared ------------------------------------------------------------------------------------
def _mapped_service(ctx: _Ctx, slug: str, pid: str | None) -> str:
    assert ctx.conn is not None
    mapping = ctx.lookup.mapping(ctx.conn.connection_id, slug)
    if mapping is None:
        raise _Skip("unmapped", f"no mapping for project {slug}", slug, pid)
    if not mapping.active:
        raise _Skip("inactive", f"mapping of {slug} is disabled", slug, pid)
    return mapping.service_id


def _common(
    ctx: _Ctx,
    service_id: str,
    source: str,
    incident_id: str,
    severity: Severity,
    ref: SentryRef,
    snapshot: IssueSnapshot,
) -> dict[str, Any]:
    return {
        "incident_id": incident_id,
        "tenant_id": ctx.conn_tenant(),
        "service_id": service_id,
        "source": source,
        "severity": severity,
        "status_at": ctx.status_at(),
        "sentry": ref,
        "snapshot": snapshot,
    }


def _primary(ctx: _Ctx, issue_id: str) -> str:
    """A merged-away issue id files under the issue it now lives in (sentry-issue-aliases,
    followed through later merges: :func:`~blametrail_normalizer.lookup.follow_aliases`)."""
    assert ctx.conn is not None
    return ctx.lookup.primary_issue(ctx.conn.connection_id, issue_id) or issue_id


def _learn(ctx: _Ctx, pid: str | None, slug: str) -> None:
    if pid and ctx.conn and ctx.lookup.project_slug(ctx.conn.connection_id, pid) != slug:
        ctx.learned.append((ctx.conn.connection_id, pid, slug))


def _wrap(ctx: _Ctx, payload: IncidentEvent, index: int) -> Envelope[Any]:
    return new_event(
        payload,
        key=payload.incident_id,
        tenant=ctx.conn_tenant(),
        occurred_at=ctx.status_at(),
        event_id=uuid.uuid5(ctx.raw.id, f"normalizer:{index}"),
        produced_at=ctx.hook.received_at,
    )


def _audit(ctx: _Ctx, skip: _Skip, stage: str = "audit") -> Envelope[Any]:
    hook, tenant = ctx.hook, ctx.conn.tenant_id if ctx.conn else None
    record = WebhookAuditedV1(
        reason=skip.reason,
        detail=skip.detail,
        tenant_id=tenant,
        connection_id=ctx.conn.connection_id if ctx.conn else hook.connection_id,
        installation_uuid=hook.installation_uuid,
        resource=hook.resource,
        action=hook.action,
        project_slug=skip.slug,
        project_id=skip.pid,
        raw_event_id=str(ctx.raw.id),
        body_sha256=hook.body_sha256,
        received_at=hook.received_at,
    )
    key = tenant or hook.connection_id or ctx.raw.key
    return new_event(
        record,
        key=key,
        tenant=tenant,
        occurred_at=hook.received_at,
        event_id=uuid.uuid5(ctx.raw.id, f"normalizer:{stage}"),
        produced_at=hook.received_at,
    )


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    return str(value) if isinstance(value, str | int) else None


def _int(value: Any) -> int | None:
    try:
        return int(value) if not isinstance(value, bool) and value is not None else None
    except (TypeError, ValueError):
        return None


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
