"""The pure fold of reconciler observations: the same events as the webhook they stand for."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

from blametrail_common.events import (
    ConnectionStateV1,
    Envelope,
    MappingStateV1,
    ServiceStateV1,
    WebhookReceivedV1,
    body_sha256,
    decode,
    encode,
    mapping_key,
    new_event,
)
from blametrail_common.events.audit import WebhookAuditedV1
from blametrail_common.events.incidents import (
    IncidentMutedV1,
    IncidentOpenedV1,
    IncidentReopenedV1,
    IncidentResolvedV1,
    incident_id_for,
    incident_order,
)
from blametrail_common.events.observations import (
    IncidentAbsorbedV1,
    IncidentMergedV1,
    IssueAliasV1,
    IssueObservedV1,
    KnownIncident,
    MovedLink,
    alias_key,
    bounded_issue,
)
from blametrail_common.testing import FIXTURES, signed_fixture
from blametrail_normalizer.lookup import MAX_ALIAS_HOPS, follow_aliases
from blametrail_normalizer.memory import MemoryLookup
from blametrail_normalizer.normalize import normalize
from blametrail_normalizer.observations import fold_observation
from blametrail_normalizer.tables import ControlPlaneTables, TableLookup

NOW = datetime(2026, 3, 14, 10, 0, tzinfo=UTC)
CONN, TENANT, SERVICE = "conn-1", "tenant-1", "svc-checkout"
ISSUE_INCIDENT = incident_id_for(TENANT, "issue", "5912345678")


def raw(name: str) -> Envelope[WebhookReceivedV1]:
    body, headers = signed_fixture(name)
    resource, _, action = name.partition(".")
    payload = WebhookReceivedV1(
        connection_id=CONN,
        resource=resource,
        action=action,
        installation_uuid=None,
        signature_header="Sentry-Hook-Signature",
        request_id=headers["Request-ID"],
        hook_timestamp=headers["Sentry-Hook-Timestamp"],
        received_at=NOW,
        body_sha256=body_sha256(body),
        body=body.decode(),
    )
    return new_event(
        payload, key="k", event_id=uuid.uuid5(uuid.NAMESPACE_URL, name), produced_at=NOW
    )


def lookup(mapped: bool = True) -> MemoryLookup:
    mem = MemoryLookup()
    mem.connections[CONN] = ConnectionStateV1(
        connection_id=CONN,
        tenant_id=TENANT,
        mode="internal",
        enabled=True,
        sentry_org_slug="acme",
        api_base_url="https://sentry.io",
        client_secrets_enc=["x"],
        updated_at=NOW,
    )
    mem.services[SERVICE] = ServiceStateV1(
        service_id=SERVICE, tenant_id=TENANT, slug="checkout", name="Checkout", updated_at=NOW
    )
    if mapped:
        mem.mappings[mapping_key(CONN, "checkout-api")] = MappingStateV1(
            mapping_id="m1",
            tenant_id=TENANT,
            connection_id=CONN,
            sentry_project_slug="checkout-api",
            service_id=SERVICE,
            active=True,
            updated_at=NOW,
        )
    return mem


LATER = datetime(2026, 3, 16, 8, 0, tzinfo=UTC)
ISSUE: dict[str, Any] = json.loads((FIXTURES / "webhooks/issue.resolved.json").read_text())["data"][
    "issue"
]
KNOWN = KnownIncident(
    incident_id=ISSUE_INCIDENT,
    service_id=SERVICE,
    severity="sev2",
    title="KeyError: 'currency'",
    status="open",
    project_slug="checkout-api",
    project_id="4505123456789012",
)


def observed(kind: str, issue: dict[str, Any], **extra: Any) -> Any:
    obs = IssueObservedV1(
        connection_id=CONN,
        tenant_id=TENANT,
        kind=kind,
        asked_issue_id=extra.pop("asked", issue["id"]),
        issue=bounded_issue(issue),
        observed_at=LATER,
        sweep_id="sweep-1",
        incident=extra.pop("incident", KNOWN),
        **extra,
    )
    return new_event(obs, key=f"{CONN}:{obs.asked_issue_id}", event_id=uuid.uuid4())


def test_an_observed_resolution_folds_like_the_missed_webhook() -> None:
    env = observed("status", ISSUE)
    out = fold_observation(env, lookup())
    ((topic, event),) = out.events
    assert topic == "incident-events"
    p = event.payload
    assert isinstance(p, IncidentResolvedV1)
    assert p.incident_id == ISSUE_INCIDENT
    assert p.status_at == LATER
    assert p.resolution_type == "in_next_release"  # from Sentry's statusDetails
    webhook = normalize(raw("issue.resolved"), lookup()).events[0][1].payload
    # the same event as the webhook but for the time it stands at
    assert p.model_dump(exclude={"status_at"}) == webhook.model_dump(exclude={"status_at"})
    # ordered after the earlier webhook's state, and redelivery gives the same ids
    opened = normalize(raw("issue.created"), lookup()).events[0][1].payload
    assert incident_order(p) > incident_order(opened)
    assert [e.id for _, e in fold_observation(env, lookup()).events] == [event.id]
    assert decode(encode(event)).payload == p


def test_unresolved_and_ignored_become_reopened_and_muted() -> None:
    reopened = fold_observation(observed("status", {**ISSUE, "status": "unresolved"}), lookup())
    assert isinstance(reopened.events[0][1].payload, IncidentReopenedV1)
    muted = fold_observation(
        observed("status", {**ISSUE, "status": "ignored", "statusDetails": {"ignoreCount": 5}}),
        lookup(),
    )
    p = muted.events[0][1].payload
    assert isinstance(p, IncidentMutedV1)
    assert p.details == {"ignoreCount": 5}
    assert fold_observation(observed("status", {**ISSUE, "status": "weird"}), lookup()).events == []


def test_a_missed_creation_opens_the_incident_and_unmapped_is_audited() -> None:
    issue = {**ISSUE, "id": "777", "status": "unresolved"}
    out = fold_observation(observed("created", issue, incident=None), lookup())
    ((_, event),) = out.events
    assert isinstance(event.payload, IncidentOpenedV1)
    assert event.payload.incident_id == incident_id_for(TENANT, "issue", "777")
    assert out.opened == [event.payload.incident_id]
    unmapped = fold_observation(observed("created", issue, incident=None), lookup(mapped=False))
    assert isinstance(unmapped.events[0][1].payload, WebhookAuditedV1)


def test_a_merge_closes_the_old_incident_into_the_primary() -> None:
    primary = {**ISSUE, "id": "8888", "status": "unresolved"}
    links = [MovedLink(external_issue_id="ext-1", web_url="https://bt.example/i/1")]
    env = observed("merged", primary, asked="5912345678", moved_links=links)
    out = fold_observation(env, lookup())
    kinds = [type(e.payload) for _, e in out.events]
    assert kinds == [IncidentOpenedV1, IncidentAbsorbedV1, IncidentMergedV1]
    into = incident_id_for(TENANT, "issue", "8888")
    opened, absorbed, merged = (e.payload for _, e in out.events)
    assert opened.incident_id == into
    assert absorbed.incident_id == into
    assert absorbed.merged_incident_id == ISSUE_INCIDENT
    assert absorbed.moved_links == links
    assert merged.incident_id == ISSUE_INCIDENT
    assert merged.into_incident_id == into
    assert merged.into_issue_id == "8888"
    assert merged.sentry.issue_id == "5912345678"
    # the primary already had an incident: no second opened
    again = fold_observation(
        observed("merged", primary, asked="5912345678", primary_known=True), lookup()
    )
    assert [type(e.payload) for _, e in again.events] == [IncidentAbsorbedV1, IncidentMergedV1]
    assert again.opened == []


def test_later_webhooks_about_a_merged_id_land_on_the_primary() -> None:
    mem = lookup()
    mem.aliases[(CONN, "5912345678")] = "8888"
    p = normalize(raw("issue.resolved"), mem).events[0][1].payload
    assert p.incident_id == incident_id_for(TENANT, "issue", "8888")
    assert p.sentry.issue_id == "8888"
    alert = normalize(raw("event_alert.triggered"), mem).events[0][1].payload
    assert alert.incident_id == incident_id_for(TENANT, "issue", "8888")


def test_sentry_strings_are_bounded_in_the_observation() -> None:
    issue = {**ISSUE, "title": "x" * 50_000, "metadata": {"huge": "y" * 10_000}}
    kept = bounded_issue(issue)
    assert len(kept["title"]) == 1000
    assert "metadata" not in kept


def test_aliases_are_followed_through_every_later_merge() -> None:
    """A into B, then B into C: a late webhook about A lands on C's incident, not on B's
    closed one; a cycle or an endless chain in the table stops, never hangs."""
    mem = lookup()
    mem.aliases[(CONN, "5912345678")] = "8888"
    mem.aliases[(CONN, "8888")] = "9999"
    p = normalize(raw("issue.resolved"), mem).events[0][1].payload
    assert p.incident_id == incident_id_for(TENANT, "issue", "9999")
    assert p.sentry.issue_id == "9999"
    assert mem.primary_issue(CONN, "8888") == "9999"
    assert mem.primary_issue(CONN, "9999") is None
    assert mem.primary_issue("other-conn", "5912345678") is None
    mem.aliases[(CONN, "9999")] = "5912345678"  # a cycle: stops before going round
    assert mem.primary_issue(CONN, "5912345678") == "9999"
    assert mem.primary_issue(CONN, "8888") == "5912345678"
    chain = MemoryLookup()
    for n in range(100):
        chain.aliases[(CONN, str(n))] = str(n + 1)
    assert chain.primary_issue(CONN, "0") == str(MAX_ALIAS_HOPS)  # the hop limit
    assert follow_aliases(lambda i: i, "1") is None  # an id aliased to itself: not merged


def test_a_merge_into_an_issue_merged_on_since_lands_on_the_last_primary() -> None:
    """Sentry answered B for A, and B was merged into C before the fold: opened, absorbed and
    into_incident_id all name C's incident (B's "already has an incident" says nothing of C)."""
    mem = lookup()
    mem.aliases[(CONN, "8888")] = "9999"
    primary = {**ISSUE, "id": "8888", "status": "unresolved"}
    env = observed("merged", primary, asked="5912345678", primary_known=True)
    out = fold_observation(env, mem)
    opened, absorbed, merged = (e.payload for _, e in out.events)
    into = incident_id_for(TENANT, "issue", "9999")
    assert isinstance(opened, IncidentOpenedV1)
    assert opened.incident_id == into
    assert absorbed.incident_id == into
    assert merged.into_incident_id == into
    assert merged.into_issue_id == "9999"
    assert out.opened == [into]


def test_the_app_lookup_follows_aliases_like_the_memory_one() -> None:
    """TableLookup (the app's, over sentry-issue-aliases) follows the same chain."""

    def alias(merged: str, primary: str) -> IssueAliasV1:
        return IssueAliasV1(
            connection_id=CONN,
            tenant_id=TENANT,
            issue_id=merged,
            primary_issue_id=primary,
            merged_at=NOW,
        )

    rows = {alias_key(CONN, "1"): alias("1", "2"), alias_key(CONN, "2"): alias("2", "3")}
    cp = cast(ControlPlaneTables, SimpleNamespace(aliases=rows))
    tables = TableLookup(cp, {}, {})
    assert tables.primary_issue(CONN, "1") == "3"
    assert tables.primary_issue(CONN, "2") == "3"
    assert tables.primary_issue(CONN, "3") is None
