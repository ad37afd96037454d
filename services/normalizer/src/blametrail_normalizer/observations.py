"""Pure: a reconciler observation -> incident events, exactly as the webhook it stands for.

An observation (:class:`~blametrail_common.events.observations.IssueObservedV1`) becomes the
issue webhook Sentry would have sent for the state observed (``issue.resolved``,
``issue.unresolved``, ``issue.ignored``, ``issue.created``), with the observation time as its hook
timestamp, and goes through :func:`~blametrail_normalizer.normalize.normalize` itself: the same
mapping checks, the same events, ordered by ``incident_order`` against the real webhooks. Ids
derive from the observation's id, so a redelivered observation gives the very same events.

A merge (``kind == "merged"``: Sentry answered for issue A with issue B) gives, in this order:
B's ``incident.opened`` (only if B had no incident), ``incident.absorbed`` on B's incident (A's
links move there) and ``incident.merged`` on A's, closing it "merged into" B's.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from blametrail_common.events import Envelope, WebhookReceivedV1, body_sha256, new_event
from blametrail_common.events.incidents import (
    IncidentEvent,
    IncidentOpenedV1,
    IssueSnapshot,
    SentryRef,
    incident_id_for,
)
from blametrail_common.events.observations import (
    IncidentAbsorbedV1,
    IncidentMergedV1,
    IssueObservedV1,
)

from blametrail_normalizer.lookup import Lookup
from blametrail_normalizer.normalize import Normalized, normalize

__all__ = ["fold_observation", "webhook_action"]

_ACTION_OF_STATUS = {"resolved": "resolved", "unresolved": "unresolved", "ignored": "ignored"}
_RESOLUTION = {
    "inNextRelease": "in_next_release",
    "inRelease": "in_release",
    "inCommit": "with_commit",
}


def webhook_action(obs: IssueObservedV1) -> str | None:
    """The ``issue.*`` action Sentry would have sent for what was observed (None: no webhook)."""
    if obs.kind == "created":
        return "created"
    return _ACTION_OF_STATUS.get(str(obs.issue.get("status")))


def _as_webhook(
    env: Envelope[IssueObservedV1], action: str, issue: dict[str, Any], part: str, lookup: Lookup
) -> Envelope[WebhookReceivedV1]:
    obs = env.payload
    data: dict[str, Any] = {"issue": issue}
    if action == "resolved":
        details = issue.get("statusDetails")
        found = [v for k, v in _RESOLUTION.items() if isinstance(details, dict) and details.get(k)]
        data["resolution_type"] = found[0] if found else "now"
    conn = lookup.connection(obs.connection_id)
    inst = conn.installation_uuid if conn is not None else None
    body = json.dumps({"action": action, "installation": {"uuid": inst}, "data": data})
    hook = WebhookReceivedV1(
        connection_id=obs.connection_id,
        resource="issue",
        action=action,
        installation_uuid=inst,
        signature_header="Sentry-Hook-Signature",
        request_id=None,
        hook_timestamp=str(int(obs.observed_at.timestamp())),
        received_at=obs.observed_at,
        body_sha256=body_sha256(body.encode()),
        body=body,
    )
    return new_event(
        hook,
        key=obs.asked_issue_id,
        tenant=obs.tenant_id,
        occurred_at=obs.observed_at,
        event_id=uuid.uuid5(env.id, f"observation:{part}"),
        produced_at=obs.observed_at,
    )


def fold_observation(env: Envelope[IssueObservedV1], lookup: Lookup) -> Normalized:
    """The events (or audit record) an observation stands for. Never raises for bad input."""
    obs = env.payload
    if obs.kind == "merged":
        return _merged(env, lookup)
    action = webhook_action(obs)
    if action is None:
        return Normalized()  # a status this build does not know: nothing to say
    return normalize(_as_webhook(env, action, obs.issue, "webhook", lookup), lookup)


def _merged(env: Envelope[IssueObservedV1], lookup: Lookup) -> Normalized:
    obs = env.payload
    answered = str(obs.issue.get("id") or "")
    known = obs.incident
    if not answered or known is None:
        return Normalized()
    # Sentry answered B for A; if B was merged on into C since, the merge lands on C (the
    # opened/absorbed below go there through normalize's own alias lookup, and so does
    # into_incident_id), and B's "already has an incident" says nothing about C's.
    primary_id = lookup.primary_issue(obs.connection_id, answered) or answered
    primary_known = obs.primary_known and primary_id == answered
    opened = normalize(_as_webhook(env, "created", obs.issue, "primary", lookup), lookup)
    into = incident_id_for(obs.tenant_id, "issue", primary_id)
    out: list[tuple[str, Envelope[Any]]] = []
    primary: IncidentEvent | None = None
    for topic, event in opened.events:
        if isinstance(event.payload, IncidentOpenedV1):
            primary = event.payload
            if not primary_known:
                out.append((topic, event))
        else:
            out.append((topic, event))  # an audit record: B's project is not mapped
    conn = lookup.connection(obs.connection_id)
    if primary is not None:
        absorbed = IncidentAbsorbedV1(
            **{k: getattr(primary, k) for k in IncidentEvent.model_fields},
            merged_incident_id=known.incident_id,
            merged_issue_id=obs.asked_issue_id,
            moved_links=obs.moved_links,
        )
        out.append(("incident-events", _wrap(env, absorbed, "absorbed")))
    merged = IncidentMergedV1(
        incident_id=known.incident_id,
        tenant_id=obs.tenant_id,
        service_id=known.service_id,
        source="sentry_issue",
        severity=known.severity,
        status_at=obs.observed_at,
        sentry=SentryRef(
            connection_id=obs.connection_id,
            org_slug=conn.sentry_org_slug if conn is not None else None,
            project_id=known.project_id,
            project_slug=known.project_slug,
            issue_id=obs.asked_issue_id,
            short_id=known.short_id,
        ),
        snapshot=IssueSnapshot(title=known.title, status="resolved"),
        into_incident_id=into,
        into_issue_id=primary_id,
    )
    out.append(("incident-events", _wrap(env, merged, "merged")))
    return Normalized(out, opened.learned_projects, opened.opened if not primary_known else [])


def _wrap(env: Envelope[IssueObservedV1], payload: IncidentEvent, part: str) -> Envelope[Any]:
    return new_event(
        payload,
        key=payload.incident_id,
        tenant=payload.tenant_id,
        occurred_at=payload.status_at,
        event_id=uuid.uuid5(env.id, f"observation:{part}"),
        produced_at=env.payload.observed_at,
    )
