"""Pure: the suspects state holds each recent incident compactly (the facts scoring and its
events read), not its whole latest event and enrichment; its events are the ones the whole
models gave.

``enriched.json`` is the record the enricher builds from the stand-in's latest-event and tags
fixtures (``blametrail_enricher.records.build_record``, fetched 2026-03-14T09:31Z), as ``make up``
serves it: frames, breadcrumbs, tags, contexts and a release whose last deploy Sentry reports.
"""

from __future__ import annotations

import gc
import hashlib
import json
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from blametrail_common.events import Envelope, encode
from blametrail_common.events.deploys import DeployRecordedV1
from blametrail_common.events.enrichment import IncidentEnrichedV1
from blametrail_common.events.incidents import (
    IncidentEvent,
    IncidentOpenedV1,
    IncidentReopenedV1,
    IncidentResolvedV1,
)
from blametrail_suspects.facts import enrichment_facts, event_facts, incident_facts
from blametrail_suspects.model import IncidentFacts
from blametrail_suspects.state import SuspectState

FIXTURE = json.loads((Path(__file__).parent / "enriched.json").read_text())
T0 = datetime(2026, 3, 14, 9, 30, tzinfo=UTC)
VIEWS, PRICING = "app/checkout/views.py", "app/checkout/pricing.py"


def deploy(
    ident: str,
    service: str,
    *,
    finished_before: timedelta | None,
    version: str | None,
    paths: list[str] | None,
    environment: str | None = "production",
    started_before: timedelta | None = None,
) -> DeployRecordedV1:
    finished = None if finished_before is None else T0 - finished_before
    started = T0 - (started_before or (finished_before or timedelta()) + timedelta(minutes=4))
    return DeployRecordedV1(
        deploy_id=ident,
        tenant_id="t",
        service_id=service,
        version=version,
        environment=environment,
        commit_sha=f"{ident:a<40}"[:40],
        started_at=started,
        finished_at=finished,
        author=f"{ident}@example.com",
        url=f"https://ci.example/{ident}",
        changed_paths=None if paths is None else [f"services/{service}/{p}" for p in paths],
        recorded_at=(finished or started) + timedelta(seconds=30),
    )


def incident(
    kind: type[IncidentEvent],
    incident_id: str,
    service: str,
    *,
    at: timedelta = timedelta(),
    first_seen: datetime | None = T0,
    slug: str = "checkout-api",
    **snapshot: Any,
) -> IncidentEvent:
    """An incident event decoded from its JSON, as the worker gets it (no string shared with
    another event)."""
    extra: dict[str, Any] = {"reason": "alert"} if kind.EVENT_TYPE == "incident.updated" else {}
    data = {
        "incident_id": incident_id,
        "tenant_id": "t",
        "service_id": service,
        "source": "sentry_issue" if first_seen else "sentry_metric_alert",
        "severity": "sev2",
        "status_at": (T0 + at).isoformat(),
        "sentry": {
            "connection_id": "c",
            "org_slug": "acme",
            "project_id": "4505",
            "project_slug": slug,
            "issue_id": incident_id.removeprefix("i-"),
            "short_id": f"CHECKOUT-{incident_id}",
            "web_url": f"https://acme.sentry.io/issues/{incident_id}/",
        },
        "snapshot": {
            "title": "KeyError: 'currency'",
            "culprit": "checkout.pricing in apply_currency",
            "level": "error",
            "status": "unresolved",
            "substatus": "new",
            "platform": "python",
            "first_seen": first_seen and first_seen.isoformat(),
            "last_seen": (T0 + at).isoformat(),
            "count": 1,
            "environment": "production",
            "release": "checkout-api@2.13.0",
            **snapshot,
        },
        **extra,
    }
    return kind.model_validate_json(json.dumps(data))


def enriched(incident_id: str, *, fetched: timedelta = timedelta(), **update: Any) -> Any:
    """The fixture record for ``incident_id``, decoded from its JSON."""
    at = datetime.fromisoformat(FIXTURE["fetched_at"]) + fetched
    data = {**FIXTURE, "incident_id": incident_id, "fetched_at": at.isoformat(), **update}
    return IncidentEnrichedV1.model_validate_json(json.dumps(data))


def scenario(state: SuspectState) -> list[Callable[[], list[Envelope[Any]]]]:
    """Openings, enrichments (newer, older, none), a late deploy, a routed incident, an
    out-of-order lifecycle, a regression and an eviction, each step one ``on_*`` call."""
    state.mapped_service = lambda conn, slug: "checkout-api" if slug == "checkout" else None
    for recorded in (
        deploy(
            "d-views",
            "checkout-api",
            finished_before=timedelta(minutes=40),
            version="checkout-api@2.13.0",
            paths=[VIEWS, "README.md"],
        ),
        deploy(
            "d-pricing",
            "checkout-api",
            finished_before=timedelta(hours=3),
            version="2.12.0",
            paths=[PRICING],
        ),
        deploy(
            "d-rolling",
            "checkout-api",
            finished_before=None,
            started_before=timedelta(minutes=2),
            version="2.15.0",
            paths=None,
        ),
        deploy(
            "d-staging",
            "checkout-api",
            finished_before=timedelta(minutes=20),
            version="2.13.1",
            paths=[VIEWS],
            environment="staging",
        ),
        deploy(
            "d-cart",
            "cart",
            finished_before=timedelta(minutes=30),
            version=None,
            paths=["cart/x.py"],
            environment=None,
        ),
    ):
        state.remember(recorded)
    frames = FIXTURE["exceptions"][0]["frames"]
    reversed_frames = [{**FIXTURE["exceptions"][0], "frames": frames[::-1]}]
    a, b, c, d = "i-101", "i-102", "i-103", "i-104"
    return [
        lambda: state.on_incident(incident(IncidentOpenedV1, a, "checkout-api")),
        lambda: state.on_enrichment(enriched(a)),  # imports Sentry's last deploy, then scores
        lambda: state.on_enrichment(
            enriched(a, fetched=-timedelta(minutes=5), environment="staging", exceptions=[])
        ),  # older: the newer one is kept
        lambda: state.on_incident(
            incident(IncidentOpenedV1, b, "cart", at=timedelta(seconds=10), release=None)
        ),
        lambda: state.on_enrichment(enriched(b, release=None, environment=None)),
        lambda: state.on_incident(
            incident(IncidentOpenedV1, c, "oncall", first_seen=None, slug="checkout")
        ),
        lambda: state.on_deploy(
            deploy(
                "d-late",
                "checkout-api",
                finished_before=timedelta(minutes=10),
                version="checkout-api@2.13.2",
                paths=[PRICING, VIEWS],
            )
        ),
        lambda: state.on_incident(
            incident(
                IncidentResolvedV1, a, "checkout-api", at=timedelta(hours=1), status="resolved"
            )
        ),
        lambda: state.on_incident(
            incident(
                IncidentReopenedV1, a, "checkout-api", at=timedelta(hours=1), substatus="regressed"
            )
        ),  # the same second: the resolve is the later state (incident_order), nothing new
        lambda: state.on_incident(
            incident(
                IncidentReopenedV1, a, "checkout-api", at=timedelta(hours=2), substatus="regressed"
            )
        ),
        lambda: state.on_incident(incident(IncidentOpenedV1, a, "checkout-api")),  # stale
        lambda: state.on_enrichment(
            enriched(a, fetched=timedelta(hours=2), exceptions=reversed_frames, environment="prod")
        ),
        lambda: state.on_incident(incident(IncidentOpenedV1, d, "cart", slug="cart")),  # evicts b
        lambda: state.on_enrichment(enriched(b, fetched=timedelta(hours=1))),
        lambda: state.on_deploy(
            deploy(
                "d-cart-2",
                "cart",
                finished_before=timedelta(minutes=3),
                version="cart@9",
                paths=None,
            )
        ),
    ]


# The events this scenario published before the state held incidents compactly (whole event and
# enrichment models): their (key, event id) in order, and a digest of their encoded bytes.
EXPECTED_IDS = [
    ("i-101", "9c86e795-cf80-5f5f-bc40-bb4bcedd3df0"),
    ("263ed934-c498-5ed2-aa3f-ccd22be5e52e", "061af8ea-9ddf-598f-8dcc-ad5093f8979d"),
    ("i-101", "b5fc51bb-ab76-5f65-ac47-6f8116420fbf"),
    ("i-102", "3f827502-c584-5f55-acb7-3a769b31680a"),
    ("i-102", "e06ca825-ce1d-5b0c-818e-357928204a59"),
    ("i-103", "a3c10afa-03b8-5f5f-a0cf-846adac735b2"),
    ("i-101", "2211fa02-8f5d-57d1-bccb-67da581cbd9b"),
    ("i-103", "1a0a8ac8-6208-5fe2-90bf-12db0cd087c4"),
    ("i-101", "6c98ca71-773b-58fb-bff7-6924155ef5e2"),
    ("i-101", "32db1469-a676-59c4-bbb4-547dcdf3eabf"),
    ("i-104", "c8abf956-e85d-5e54-8ba8-2128a5feab6c"),
    ("i-104", "4cb644ba-b5b6-5bf5-811c-332bfb953fc7"),
]
EXPECTED_DIGEST = "2c288de1e7e9a12da6a532db06442148c0ae7e899da3cbe6a7de9e537d446481"


def test_the_compact_state_publishes_what_the_whole_models_did() -> None:
    state = SuspectState(max_incidents=3)
    published = [encode(env) for step in scenario(state) for env in step()]
    ids = [(e["key"], e["id"]) for e in map(json.loads, published)]
    assert ids == EXPECTED_IDS
    assert hashlib.sha256(b"\n".join(published)).hexdigest() == EXPECTED_DIGEST


def whole_model_facts(
    incident: IncidentEvent, enrichment: IncidentEnrichedV1 | None, mapped_from: list[str]
) -> IncidentFacts:
    """The facts as they were read from the whole models, when the state kept those."""
    snap = incident.snapshot
    release = enrichment.release.version if enrichment and enrichment.release else None
    environment = enrichment.environment if enrichment else None
    files = tuple(
        name
        for exc in reversed(enrichment.exceptions if enrichment else [])
        for frame in reversed(exc.frames)
        if frame.in_app and (name := frame.filename or frame.abs_path)
    )
    return IncidentFacts(
        services=(incident.service_id, *(s for s in mapped_from if s != incident.service_id)),
        first_seen=snap.first_seen or incident.status_at,
        release=release or snap.release,
        environment=environment or snap.environment,
        substatus=snap.substatus,
        in_app_files=files,
    )


def test_the_facts_kept_are_the_ones_the_whole_models_give() -> None:
    frame = FIXTURE["exceptions"][0]["frames"][1]
    two = [
        {**FIXTURE["exceptions"][0], "frames": [{**frame, "filename": None}, frame]},
        FIXTURE["exceptions"][0],
    ]
    records = [
        None,
        enriched("i-1"),
        enriched("i-1", release=None, environment=None),
        enriched("i-1", release={"version": ""}, environment="", exceptions=[]),
        enriched("i-1", exceptions=two),
    ]
    events = [
        incident(IncidentOpenedV1, "i-1", "checkout-api"),
        incident(
            IncidentOpenedV1, "i-1", "oncall", first_seen=None, release=None, environment=None
        ),
        incident(IncidentReopenedV1, "i-1", "checkout-api", substatus="regressed"),
    ]
    for event in events:
        for record in records:
            kept = None if record is None else enrichment_facts(record)
            got = incident_facts(event_facts(event), kept, mapped_from=["checkout-api", "cart"])
            assert got == whole_model_facts(event, record, ["checkout-api", "cart"])


def test_an_incident_held_takes_under_4_kb() -> None:
    """Its latest event and a realistic enrichment (the fixture's: 4 KB as JSON, ~21 KB as
    models) in; what the state still holds afterwards, per incident."""
    state, n = SuspectState(), 500
    state.remember(
        deploy(
            "d-views",
            "checkout-api",
            finished_before=timedelta(minutes=40),
            version="checkout-api@2.13.0",
            paths=[VIEWS],
        )
    )
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k in range(n):
            state.on_incident(incident(IncidentOpenedV1, f"i-{k:06d}", "checkout-api"))
            state.on_enrichment(enriched(f"i-{k:06d}"))
        gc.collect()
        held = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert len(state.incidents) == n
    assert held < 4096, f"{held:.0f} B per incident"


def test_a_deploys_later_state_replaces_it_among_the_candidates() -> None:
    state = SuspectState()
    rolling = deploy(
        "d-1",
        "checkout-api",
        finished_before=None,
        version="2.0",
        paths=None,
        started_before=timedelta(minutes=30),
    )
    state.remember(rolling)
    (first,) = state.on_incident(incident(IncidentOpenedV1, "i-1", "checkout-api"))
    assert [s.finished_at for s in first.payload.suspects] == [None]
    (done,) = state.on_deploy(
        rolling.model_copy(update={"finished_at": T0 - timedelta(minutes=20)})
    )
    assert [s.finished_at for s in done.payload.suspects] == [T0 - timedelta(minutes=20)]
    moved = rolling.model_copy(update={"service_id": "cart"})
    assert state.on_deploy(moved) == []  # no longer the incident's service's: not rescored
    (again,) = state.on_incident(
        incident(IncidentOpenedV1, "i-1", "checkout-api", at=timedelta(seconds=1), count=2)
    )
    assert (again.payload.candidates, again.payload.suspects) == (0, [])


def test_a_warm_up_scores_each_incident_once_and_ends_where_scoring_every_event_ends(
    monkeypatch: Any,
) -> None:
    """``restoring`` (the worker's warm-up after a restart): the same state, the same last
    ranking of every incident (so the next event publishes exactly what it would have), with
    one scoring an incident instead of one an event read back."""
    import blametrail_suspects.state as state_module

    calls = 0
    real = state_module.score

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(state_module, "score", counted)
    history: list[Any] = []
    for n in range(6):
        i = f"i-{200 + n}"
        history += [
            incident(IncidentOpenedV1, i, "checkout-api", at=timedelta(seconds=n)),
            enriched(i, fetched=timedelta(seconds=n)),
            incident(IncidentResolvedV1, i, "checkout-api", at=timedelta(minutes=n + 1)),
        ]
    history.append(enriched("i-200", fetched=-timedelta(hours=1)))  # an older one: kept out
    history.append(incident(IncidentOpenedV1, "i-200", "checkout-api", at=-timedelta(hours=1)))

    def fresh() -> SuspectState:
        s = SuspectState(max_incidents=5)  # i-200 is evicted, then read back again
        for d in ("d-views", "d-pricing"):
            s.remember(
                deploy(
                    d,
                    "checkout-api",
                    finished_before=timedelta(minutes=30),
                    version="checkout-api@2.13.0" if d == "d-views" else "2.12.0",
                    paths=[VIEWS if d == "d-views" else PRICING],
                )
            )
        return s

    scored, restored = fresh(), fresh()
    for p in history:
        (scored.on_enrichment if isinstance(p, IncidentEnrichedV1) else scored.on_incident)(p)
    every_event = calls
    calls = 0
    with restored.restoring():
        for p in history:
            out = (
                restored.on_enrichment
                if isinstance(p, IncidentEnrichedV1)
                else restored.on_incident
            )(p)
            # no suspects while restoring (a release import is returned, which the worker drops)
            assert [e for e in out if not isinstance(e.payload, DeployRecordedV1)] == []
    assert calls == len(restored.incidents) == 5 < every_event
    assert list(restored.incidents) == list(scored.incidents)
    assert {i: (k.last, k.order, k.enrichment) for i, k in restored.incidents.items()} == {
        i: (k.last, k.order, k.enrichment) for i, k in scored.incidents.items()
    }
    assert restored.deploys.keys() == scored.deploys.keys()  # Sentry's releases imported alike
    nxt = incident(IncidentOpenedV1, "i-205", "checkout-api", at=timedelta(hours=2))
    assert restored.on_incident(nxt) == scored.on_incident(nxt)
