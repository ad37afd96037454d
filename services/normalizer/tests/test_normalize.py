"""The pure rules on every fixture: one test per behaviour, no Kafka."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
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
    IncidentAssignedV1,
    IncidentMutedV1,
    IncidentOpenedV1,
    IncidentReopenedV1,
    IncidentResolvedV1,
    IncidentUpdatedV1,
    incident_id_for,
)
from blametrail_common.events.installations import (
    SentryInstallationSeenV1,
    SentryInstallationV1,
)
from blametrail_common.testing import FIXTURES, signed_fixture
from blametrail_normalizer.memory import MemoryLookup
from blametrail_normalizer.normalize import normalize

NOW = datetime(2026, 3, 14, 10, 0, tzinfo=UTC)
CONN, TENANT, SERVICE = "conn-1", "tenant-1", "svc-checkout"
INSTALL = "7d1f2c3a-9b8e-4f6d-a1c2-3e4f5a6b7c8d"


def raw(
    name: str, connection_id: str | None = CONN, supported: bool = True, body: bytes | None = None
) -> Envelope[WebhookReceivedV1]:
    fixture_body, headers = signed_fixture(name)
    body = fixture_body if body is None else body
    resource, _, action = name.partition(".")
    payload = WebhookReceivedV1(
        connection_id=connection_id,
        resource=resource,
        action=action,
        installation_uuid=INSTALL,
        signature_header="Sentry-Hook-Signature",
        request_id=headers["Request-ID"],
        hook_timestamp=headers["Sentry-Hook-Timestamp"],
        received_at=NOW,
        body_sha256=body_sha256(body),
        body=body.decode(),
        supported=supported,
    )
    return new_event(
        payload,
        key="k",
        event_id=uuid.uuid5(uuid.NAMESPACE_URL, name + str(connection_id)),
        produced_at=NOW,
    )


def lookup(
    active: bool = True, mapped: bool = True, enabled: bool = True, **extra: Any
) -> MemoryLookup:
    mem = MemoryLookup()
    mem.connections[CONN] = ConnectionStateV1(
        connection_id=CONN,
        tenant_id=TENANT,
        mode="internal",
        enabled=enabled,
        sentry_org_slug="acme",
        api_base_url="https://sentry.io",
        client_secrets_enc=["x"],
        installation_uuid=extra.get("installation_uuid", INSTALL),
        updated_at=NOW,
    )
    mem.services[SERVICE] = ServiceStateV1(
        service_id=SERVICE, tenant_id=TENANT, slug="checkout", name="Checkout", updated_at=NOW
    )
    mem.services["svc-other-tenant"] = ServiceStateV1(
        service_id="svc-other-tenant", tenant_id="t2", slug="x", name="X", updated_at=NOW
    )
    if mapped:
        mem.mappings[mapping_key(CONN, "checkout-api")] = MappingStateV1(
            mapping_id="m1",
            tenant_id=TENANT,
            connection_id=CONN,
            sentry_project_slug="checkout-api",
            sentry_project_id=extra.get("project_id"),
            service_id=SERVICE,
            active=active,
            updated_at=NOW,
        )
    return mem


def only(out: Any, kind: type) -> Any:
    ((topic, env),) = out.events
    assert isinstance(env.payload, kind), env.payload
    assert topic == ("webhook-audit" if kind is WebhookAuditedV1 else "incident-events")
    return env


ISSUE_INCIDENT = incident_id_for(TENANT, "issue", "5912345678")


def test_issue_created_opens_an_incident_on_the_mapped_service() -> None:
    env = only(normalize(raw("issue.created"), lookup()), IncidentOpenedV1)
    p = env.payload
    assert env.key == p.incident_id == ISSUE_INCIDENT
    assert (p.tenant_id, p.service_id, p.source, p.severity) == (
        TENANT,
        SERVICE,
        "sentry_issue",
        "sev2",
    )
    assert p.snapshot.title == "KeyError: 'currency'"
    assert p.snapshot.culprit == "checkout.pricing in compute_total"
    assert p.snapshot.count == 1
    assert p.snapshot.first_seen == datetime(2026, 3, 14, 9, 26, 53, 412000, tzinfo=UTC)
    assert (p.sentry.short_id, p.sentry.issue_id, p.sentry.project_slug) == (
        "CHECKOUT-API-3K",
        "5912345678",
        "checkout-api",
    )
    assert p.sentry.web_url == "https://acme.sentry.io/issues/5912345678/"
    assert p.status_at == datetime.fromtimestamp(1773480414, UTC)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("issue.resolved", IncidentResolvedV1),
        ("issue.unresolved", IncidentReopenedV1),
        ("issue.assigned", IncidentAssignedV1),
        ("issue.ignored", IncidentMutedV1),
    ],
)
def test_issue_state_changes_map_to_incident_events(name: str, kind: type) -> None:
    env = only(normalize(raw(name), lookup()), kind)
    assert env.payload.incident_id == ISSUE_INCIDENT
    assert env.payload.snapshot.last_seen is not None  # the 'Z' form parses too


def test_resolution_assignee_and_mute_details_are_kept() -> None:
    assert (
        only(normalize(raw("issue.resolved"), lookup()), IncidentResolvedV1).payload.resolution_type
        == "in_next_release"
    )
    assignee = only(normalize(raw("issue.assigned"), lookup()), IncidentAssignedV1).payload.assignee
    assert (assignee.type, assignee.id, assignee.name) == ("user", "3456789", "Priya Natarajan")
    muted = only(normalize(raw("issue.ignored"), lookup()), IncidentMutedV1).payload
    assert muted.details == {"ignoreCount": 100, "ignoreWindow": 60}


def test_legacy_archived_action_mutes_too() -> None:
    body = signed_fixture("issue.ignored")[0].replace(b'"action":"ignored"', b'"action":"archived"')
    only(normalize(raw("issue.ignored", body=body), lookup()), IncidentMutedV1)


def test_unmapped_project_gives_no_incident_but_an_audit_record() -> None:
    env = only(normalize(raw("issue.created"), lookup(mapped=False)), WebhookAuditedV1)
    assert (env.payload.reason, env.payload.project_slug, env.payload.tenant_id) == (
        "unmapped",
        "checkout-api",
        TENANT,
    )


def test_inactive_mapping_gives_no_incident_but_an_audit_record() -> None:
    assert (
        only(normalize(raw("issue.created"), lookup(active=False)), WebhookAuditedV1).payload.reason
        == "inactive"
    )


def test_unknown_and_disabled_connections_are_audited() -> None:
    assert (
        only(
            normalize(raw("issue.created", connection_id="nope"), lookup()), WebhookAuditedV1
        ).payload.reason
        == "unknown_connection"
    )
    assert (
        only(
            normalize(raw("issue.created"), lookup(enabled=False)), WebhookAuditedV1
        ).payload.reason
        == "uninstalled"
    )
    audited = only(normalize(raw("issue.created"), lookup(enabled=False)), WebhookAuditedV1)
    assert (audited.payload.tenant_id, audited.key) == (TENANT, TENANT)  # the tenant sees it


def test_oauth_webhooks_resolve_the_tenant_by_installation() -> None:
    mem = lookup()
    mem.connections[CONN] = mem.connections[CONN].model_copy(
        update={"mode": "oauth", "installation_uuid": INSTALL}
    )
    env = only(normalize(raw("issue.created", connection_id=None), mem), IncidentOpenedV1)
    assert env.payload.tenant_id == TENANT


def test_unsupported_and_other_resources_are_audited() -> None:
    assert (
        only(normalize(raw("comment.created"), lookup()), WebhookAuditedV1).payload.reason
        == "unsupported"
    )
    assert (
        only(
            normalize(raw("issue.created", supported=False), lookup()), WebhookAuditedV1
        ).payload.reason
        == "unsupported"
    )


def test_installation_webhooks_go_to_the_control_plane_with_their_grant() -> None:
    # No connection exists yet for a new installation: none is needed.
    created = normalize(raw("installation.created", connection_id=None), MemoryLookup())
    [(topic, env)] = created.events
    assert topic == "sentry-installations"
    assert env.key == INSTALL
    assert isinstance(env.payload, SentryInstallationV1)
    assert (env.payload.action, env.payload.sentry_org_slug, env.payload.app_slug) == (
        "created",
        "acme",
        "acme-triage",
    )
    assert (
        env.payload.code
        == json.loads(signed_fixture("installation.created")[0])["data"]["installation"]["code"]
    )
    [(_, deleted)] = normalize(raw("installation.deleted", connection_id=None), lookup()).events
    assert isinstance(deleted.payload, SentryInstallationV1)
    assert (deleted.payload.action, deleted.payload.code) == ("deleted", None)
    # deterministic: a replay overwrites rather than duplicates
    assert (
        normalize(raw("installation.deleted", connection_id=None), lookup()).events[0][1].id
        == deleted.id
    )
    bad = normalize(raw("installation.created", body=b'{"action":"renamed","data":{}}'), lookup())
    assert only(bad, WebhookAuditedV1).payload.reason == "invalid_payload"


def test_invalid_payload_is_audited_never_raised() -> None:
    for body in (
        b'{"action":"created","data":{"issue":{}}}',
        b"[1]",
        b'{"data":{"issue":{"id":"1","title":"\\ud800"}}}',
    ):
        env = only(normalize(raw("issue.created", body=body), lookup()), WebhookAuditedV1)
        assert env.payload.reason == "invalid_payload"


def test_the_body_reads_as_pythons_json_reads_it() -> None:
    """The body is read by orjson where it reads as Python's parser does (``jsontext``): an
    integer past 64 bits stays exact (orjson would make it a float), ``NaN`` still makes the
    incident (orjson refuses it), and nesting both refuse is audited as before."""
    fixture = signed_fixture("issue.created")[0]
    plain = only(normalize(raw("issue.created"), lookup()), IncidentOpenedV1).payload
    big = 123456789012345678901234567890
    for extra, users in ((b"", big), (b',"x":NaN', 1)):  # NaN alone, or orjson refuses all
        odd = fixture.replace(b'"userCount":1', b'"userCount":%d%s' % (users, extra))
        assert odd != fixture
        got = only(normalize(raw("issue.created", body=odd), lookup()), IncidentOpenedV1).payload
        assert got.snapshot.user_count == users
        assert got.model_copy(update={"snapshot": plain.snapshot}) == plain
    deep = b'{"data":{"issue":' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    env = only(normalize(raw("issue.created", body=deep), lookup()), WebhookAuditedV1)
    assert env.payload.reason == "invalid_payload"


def test_nul_and_lone_surrogates_in_sentry_text_still_make_an_encodable_incident() -> None:
    body = signed_fixture("issue.created")[0].replace(
        b"KeyError: 'currency'", b"Key\\u0000Err\\ud800or"
    )
    env = only(normalize(raw("issue.created", body=body), lookup()), IncidentOpenedV1)
    assert env.payload.snapshot.title == "Key\x00Err\ufffdor"
    assert decode(encode(env)).payload.snapshot.title == "Key\x00Err\ufffdor"


def test_lone_surrogates_are_scrubbed_however_the_body_holds_them() -> None:
    # Only bodies that may hold one are scrubbed: an upper-case escape, and a surrogate in the
    # text itself (the raw envelope's own JSON may carry one) are found as the escape is.
    fixture = signed_fixture("issue.created")[0]
    upper = raw("issue.created", body=fixture.replace(b"KeyError", b"Key\\uDBFFError"))
    lone = raw("issue.created")
    text = lone.payload.body.replace("KeyError", "Key\ud800Error")
    lone = lone.model_copy(update={"payload": lone.payload.model_copy(update={"body": text})})
    for env in (upper, lone):
        title = only(normalize(env, lookup()), IncidentOpenedV1).payload.snapshot.title
        assert title == "Key\ufffdError: 'currency'"
    plain = only(normalize(raw("issue.created"), lookup()), IncidentOpenedV1)
    assert plain.payload.snapshot.title == "KeyError: 'currency'"


def test_event_alert_opens_then_updates_with_the_action_settings() -> None:
    mem = lookup()
    first = only(normalize(raw("event_alert.triggered"), mem), IncidentOpenedV1)
    p = first.payload
    assert p.incident_id == ISSUE_INCIDENT  # same incident as the issue's webhooks
    assert p.severity == "sev2"  # settings say sev2
    assert (p.snapshot.environment, p.snapshot.release) == ("production", "checkout-api@2.14.0")
    assert p.sentry.alert_rule == "Checkout errors \u2192 on-call"
    mem.incidents.add(p.incident_id)
    assert (
        only(normalize(raw("event_alert.triggered"), mem), IncidentUpdatedV1).payload.reason
        == "alert_triggered"
    )


def test_event_alert_environment_filter_and_service_override() -> None:
    base = signed_fixture("event_alert.triggered")[0]
    filtered = base.replace(
        b'{"name":"severity","value":"sev2"}',
        b'{"name":"severity","value":"sev2"},{"name":"environment","value":"staging"}',
    )
    assert (
        only(
            normalize(raw("event_alert.triggered", body=filtered), lookup()), WebhookAuditedV1
        ).payload.reason
        == "environment_filtered"
    )
    routed = base.replace(
        b'{"name":"team","value":"payments"}', b'{"name":"service","value":"svc-checkout"}'
    )
    env = only(
        normalize(raw("event_alert.triggered", body=routed), lookup(mapped=False)), IncidentOpenedV1
    )
    assert env.payload.service_id == SERVICE  # explicit routing needs no mapping
    foreign = base.replace(
        b'{"name":"team","value":"payments"}', b'{"name":"service","value":"svc-other-tenant"}'
    )
    assert (
        only(
            normalize(raw("event_alert.triggered", body=foreign), lookup()), WebhookAuditedV1
        ).payload.reason
        == "unknown_service"
    )


def test_alert_with_only_a_project_id_uses_learnt_slugs() -> None:
    body = signed_fixture("event_alert.triggered")[0].replace(
        b"/projects/acme/checkout-api/events/", b"/elsewhere/"
    )
    assert (
        only(
            normalize(raw("event_alert.triggered", body=body), lookup()), WebhookAuditedV1
        ).payload.reason
        == "unmapped"
    )
    learnt = normalize(raw("issue.created"), lookup()).learned_projects
    assert learnt == [(CONN, "4505123456789012", "checkout-api")]
    mem = lookup()
    mem.projects[(CONN, "4505123456789012")] = "checkout-api"
    only(normalize(raw("event_alert.triggered", body=body), mem), IncidentOpenedV1)
    only(
        normalize(raw("event_alert.triggered", body=body), lookup(project_id="4505123456789012")),
        IncidentOpenedV1,
    )


def test_metric_alert_critical_opens_and_resolved_resolves() -> None:
    mem = lookup()
    opened = only(normalize(raw("metric_alert.critical"), mem), IncidentOpenedV1).payload
    assert opened.incident_id == incident_id_for(TENANT, "metric_alert", "77120")
    assert (opened.source, opened.severity, opened.service_id) == (
        "sentry_metric_alert",
        "sev1",
        SERVICE,
    )
    assert opened.snapshot.title == "High error rate on checkout"
    resolved = only(normalize(raw("metric_alert.resolved"), mem), IncidentResolvedV1).payload
    assert resolved.incident_id == opened.incident_id


def test_every_signed_fixture_normalizes_and_round_trips_the_codec() -> None:
    names = sorted(
        p.stem for p in (FIXTURES / "signed").glob("*.body") if not p.stem.startswith("issue-link")
    )
    for name in names:
        out = normalize(raw(name), lookup())
        assert out.events, name
        for _, env in out.events:
            assert decode(encode(env)) == env


def test_normalize_is_deterministic() -> None:
    for name in (
        "issue.created",
        "event_alert.triggered",
        "metric_alert.critical",
        "comment.created",
    ):
        a, b = normalize(raw(name), lookup()), normalize(raw(name), lookup())
        assert [encode(e) for _, e in a.events] == [encode(e) for _, e in b.events]


def test_an_internal_connection_is_told_the_installation_its_webhooks_name() -> None:
    out = normalize(raw("issue.created"), lookup(installation_uuid=None))
    assert [t for t, _ in out.events] == ["incident-events", "sentry-installations"]
    seen = out.events[1][1]
    assert isinstance(seen.payload, SentryInstallationSeenV1)
    assert (seen.key, seen.payload.installation_uuid, seen.payload.connection_id) == (
        INSTALL,
        INSTALL,
        CONN,
    )
    # Also when no incident is made (the installation is the connection's all the same).
    unmapped = normalize(raw("issue.created"), lookup(mapped=False, installation_uuid=None))
    assert [t for t, _ in unmapped.events] == ["webhook-audit", "sentry-installations"]
    # A newer installation (the integration made anew) is told too; a known one is not.
    assert [t for t, _ in normalize(raw("issue.created"), lookup()).events] == ["incident-events"]
    moved = normalize(raw("issue.created"), lookup(installation_uuid="older-installation"))
    assert [t for t, _ in moved.events][-1] == "sentry-installations"
    # Never for a disabled connection, nor for a webhook that did not come to its own URL.
    disabled = normalize(raw("issue.created"), lookup(enabled=False, installation_uuid=None))
    assert [t for t, _ in disabled.events] == ["webhook-audit"]
    mem = lookup(installation_uuid=None)
    mem.connections[CONN] = mem.connections[CONN].model_copy(update={"mode": "oauth"})
    assert [t for t, _ in normalize(raw("issue.created"), mem).events] == ["incident-events"]
    a, b = (normalize(raw("issue.created"), lookup(installation_uuid=None)) for _ in "ab")
    assert [encode(e) for _, e in a.events] == [encode(e) for _, e in b.events]


def test_an_invalid_alert_action_severity_is_audited_and_the_incident_still_made() -> None:
    body = signed_fixture("event_alert.triggered")[0].replace(
        b'{"name":"severity","value":"sev2"}', b'{"name":"severity","value":"critical"}'
    )
    out = normalize(raw("event_alert.triggered", body=body), lookup())
    assert [t for t, _ in out.events] == ["incident-events", "webhook-audit"]
    opened, audit = out.events[0][1].payload, out.events[1][1]
    assert isinstance(opened, IncidentOpenedV1)
    assert opened.severity == "sev2"  # the event's level (error), not the ignored setting
    assert isinstance(audit.payload, WebhookAuditedV1)
    assert (audit.payload.reason, audit.payload.tenant_id, audit.key) == (
        "invalid_setting",
        TENANT,
        TENANT,
    )
    assert "'critical'" in audit.payload.detail
    assert "sev1" in audit.payload.detail
    assert audit.payload.project_slug == "checkout-api"
    assert audit.id != out.events[0][1].id
    again = normalize(raw("event_alert.triggered", body=body), lookup())
    assert [encode(e) for _, e in again.events] == [encode(e) for _, e in out.events]
    # An absurd value is bounded in the record; a valid or missing one is never audited.
    huge = signed_fixture("event_alert.triggered")[0].replace(
        b'{"name":"severity","value":"sev2"}',
        b'{"name":"severity","value":"' + b"x" * 10_000 + b'"}',
    )
    ((_, big),) = [
        e
        for e in normalize(raw("event_alert.triggered", body=huge), lookup()).events
        if e[0] == "webhook-audit"
    ]
    assert len(big.payload.detail) < 300
    unset = signed_fixture("event_alert.triggered")[0].replace(
        b'{"name":"severity","value":"sev2"}', b'{"name":"severity","value":""}'
    )
    assert [t for t, _ in normalize(raw("event_alert.triggered", body=unset), lookup()).events] == [
        "incident-events"
    ]


def test_an_invalid_metric_alert_action_severity_is_audited() -> None:
    name = "metric_alert.critical"
    body = signed_fixture(name)[0]
    doc = json.loads(body)
    for trigger in doc["data"]["metric_alert"]["alert_rule"]["triggers"]:
        for act in trigger["actions"]:
            if act.get("type") == "sentry_app":
                act["settings"] = [{"name": "severity", "value": 7}]
    out = normalize(raw(name, body=json.dumps(doc).encode()), lookup())
    assert [t for t, _ in out.events] == ["incident-events", "webhook-audit"]
    assert out.events[0][1].payload.severity == "sev1"
    assert out.events[1][1].payload.reason == "invalid_setting"


def _retried(name: str, status: str) -> Envelope[WebhookReceivedV1]:
    """``name``'s fixture as Sentry's retry re-serialises it after a later change of the issue."""
    doc = json.loads(signed_fixture(name)[0])
    doc["data"]["issue"]["status"] = status
    return raw(name, body=json.dumps(doc).encode())


def test_a_stale_state_retry_is_audited_not_taken_as_a_state_change() -> None:
    """Issue 18 M6: a retried ``issue.resolved`` whose body (re-serialised at the retry) shows
    the issue unresolved is dropped, audited ``stale``; so is the reverse. The body's status is
    not followed: the later change has its own webhook."""
    for name, status in (("issue.resolved", "unresolved"), ("issue.unresolved", "resolved")):
        env = only(normalize(_retried(name, status), lookup()), WebhookAuditedV1)
        assert env.payload.reason == "stale", name
    fresh = normalize(_retried("issue.resolved", "resolved"), lookup())
    assert only(fresh, IncidentResolvedV1)
