"""Pure: when the worker scores an incident again, and what the incident.suspects event holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from blametrail_common.events.deploys import DeployRecordedV1
from blametrail_common.events.enrichment import (
    ExceptionInfo,
    IncidentEnrichedV1,
    ReleaseInfo,
    StackFrame,
)
from blametrail_common.events.incidents import IncidentOpenedV1, IssueSnapshot, SentryRef
from blametrail_suspects.state import SuspectState

T0 = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


def deploy(
    ident: str, minutes_before: int, version: str, paths: list[str] | None = None
) -> DeployRecordedV1:
    finished = T0 - timedelta(minutes=minutes_before)
    return DeployRecordedV1(
        deploy_id=ident,
        tenant_id="t",
        service_id="svc",
        version=version,
        environment="production",
        commit_sha=None,
        started_at=finished - timedelta(minutes=3),
        finished_at=finished,
        changed_paths=paths,
        recorded_at=finished,
    )


def opened() -> IncidentOpenedV1:
    return IncidentOpenedV1(
        incident_id="i-1",
        tenant_id="t",
        service_id="svc",
        source="sentry_issue",
        severity="sev2",
        status_at=T0,
        sentry=SentryRef(connection_id="c", issue_id="1"),
        snapshot=IssueSnapshot(
            title="KeyError", first_seen=T0, substatus="new", environment="production"
        ),
    )


def enriched(release: str, file: str) -> IncidentEnrichedV1:
    frame = StackFrame(
        filename=file,
        abs_path=None,
        module=None,
        function="f",
        line_no=1,
        col_no=None,
        in_app=True,
        context=[],
    )
    return IncidentEnrichedV1(
        incident_id="i-1",
        tenant_id="t",
        connection_id="c",
        sentry_issue_id="1",
        sentry_event_id="e",
        fetched_at=T0 + timedelta(minutes=1),
        title=None,
        message=None,
        platform="python",
        environment="production",
        release=ReleaseInfo(version=release),
        tags=[],
        event_tags=[],
        exceptions=[
            ExceptionInfo(
                type="KeyError",
                value="x",
                module=None,
                mechanism=None,
                handled=False,
                frames=[frame],
            )
        ],
        breadcrumbs=[],
        user=None,
        contexts={},
        event_created_at=None,
        event_received_at=None,
        links={},
        truncated=[],
    )


def test_an_incident_is_scored_on_open_and_sharper_once_enriched() -> None:
    state = SuspectState()
    state.remember(deploy("d-old", 300, "svc@1.0", ["app/billing.py"]))
    state.remember(deploy("d-new", 5, "svc@1.1", ["app/other.py"]))
    state.remember(deploy("d-mid", 60, "svc@1.05", ["app/checkout/views.py"]))
    (first,) = state.on_incident(opened())
    assert first.payload.suspects[0].deploy_id == "d-new"  # nearest in time, no release yet
    assert first.payload.candidates == 3
    (second,) = state.on_enrichment(enriched("svc@1.05", "app/checkout/views.py"))
    top = second.payload.suspects[0]
    assert top.deploy_id == "d-mid"
    assert {g.name for g in top.signals} >= {"release", "time", "frames"}
    assert abs(sum(g.contribution for g in top.signals) - top.score) < 1e-3
    assert "svc@1.05" in top.explain
    assert second.payload.computed_at == T0 + timedelta(
        minutes=1
    )  # the newest input, not the clock


def test_a_late_deploy_rescores_and_an_unchanged_ranking_publishes_nothing() -> None:
    state = SuspectState()
    state.remember(deploy("d-a", 120, "svc@2.0"))
    assert len(state.on_incident(opened())) == 1
    assert state.on_incident(opened()) == []  # same ranking: nothing new
    (late,) = state.on_deploy(deploy("d-late", 10, "svc@2.1"))
    assert [s.deploy_id for s in late.payload.suspects] == ["d-late", "d-a"]
    other = deploy("d-other", 10, "x@1")
    other = other.model_copy(update={"service_id": "another"})
    assert state.on_deploy(other) == []  # another service's deploy leaves the incident alone


def test_output_is_deterministic() -> None:
    runs = []
    for _ in range(2):
        state = SuspectState()
        state.remember(deploy("d-a", 30, "svc@2.0"))
        runs.append(state.on_incident(opened()))
    assert runs[0] == runs[1]
    assert runs[0][0].id == runs[1][0].id


def test_enrichment_of_an_unknown_incident_waits_for_the_incident() -> None:
    assert SuspectState().on_enrichment(enriched("svc@1", "a.py")) == []


def test_a_release_unknown_to_the_history_is_imported_from_sentrys_last_deploy() -> None:
    state = SuspectState()
    state.on_incident(opened())
    record = enriched("svc@3.0", "a.py")
    assert record.release is not None
    release = record.release.model_copy(
        update={
            "last_deploy_environment": "production",
            "last_deploy_started": "2026-05-04T11:40:00Z",
            "last_deploy_finished": "2026-05-04T11:45:00Z",
            "commit": "abc1234",
        }
    )
    out = state.on_enrichment(record.model_copy(update={"release": release}))
    deploy, suspects = (e.payload for e in out)
    assert isinstance(deploy, DeployRecordedV1)
    assert (deploy.source, deploy.version, deploy.service_id) == ("sentry", "svc@3.0", "svc")
    assert suspects.suspects[0].deploy_id == deploy.deploy_id  # scored at once, as the release
    again = state.on_enrichment(record.model_copy(update={"release": release}))
    assert again == []  # known now: not imported twice, and the ranking did not change


def test_deploys_of_the_service_the_project_is_mapped_to_are_candidates_too() -> None:
    """An alert-rule action routed the incident to an on-call service; the code that broke is
    deployed as the service its Sentry project is mapped to."""
    state = SuspectState()
    routed = opened().model_copy(
        update={
            "service_id": "svc-oncall",
            "sentry": SentryRef(connection_id="c", issue_id="1", project_slug="checkout-api"),
        }
    )
    assert state.on_incident(routed)[0].payload.candidates == 0
    state.mapped_service = lambda conn, slug: (
        "svc" if (conn, slug) == ("c", "checkout-api") else None
    )
    (late,) = state.on_deploy(deploy("d-mapped", 15, "svc@4.0"))
    assert [s.deploy_id for s in late.payload.suspects] == ["d-mapped"]
