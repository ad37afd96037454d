"""bench/suspects/state.py: what the suspects worker's state holds per incident, and its CPU per event.

Issue #19's storm: the worker held every recent incident's full latest event and enrichment.
This feeds :class:`~blametrail_suspects.state.SuspectState` ``N`` incidents as the worker gets
them (wire bytes, decoded one by one, so no two incidents share strings): an ``incident.opened``
with a full Sentry snapshot, then the enrichment the enricher builds from the stand-in's
latest-event and tags fixtures (what ``make up`` serves). 20 services, 10 deploys each across the
lookback, changed paths that meet the fixture's in-app frames.

Memory: ``tracemalloc``'s traced bytes still held after the incidents went in (garbage
collected), minus those held before, per incident. CPU: ``process_time`` per event, decode and
``on_*`` together and decode alone, median of ``ROUNDS`` rounds of ``N`` incidents into a fresh
state. Pure CPU, no infrastructure::

    python3 -m uv run --frozen python bench/suspects/state.py [N]

Measured 2026-12-01 on the shared 2-core machine, N=2,000, each version twice, interleaved (the
whole-model version run from a copy of its source on PYTHONPATH)::

                                    whole models   compact (c43fd18)   + deploys by service
    held per incident                   25,880 B         2,163 B            2,167 B
    incident.opened, us/event CPU       276-353          340-385            319-412
    incident.enriched, us/event CPU     735-751          590-619            482-525
    decode alone: opened 10-15 us, enriched 43-48 us (all versions: the codec is shared)

The opening's figures are within the machine's noise. Scoring dominates the CPU (ranking, the
five suspects' explanations and their models); decoding the enrichment is under a tenth, and a
view model of the fields read (``extra="ignore"``) decodes it in 20 us instead of 49, which
would not pay for accepting records the full model refuses.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from blametrail_common.events import decode, encode, new_event
from blametrail_common.events.deploys import DeployRecordedV1
from blametrail_common.events.incidents import IncidentOpenedV1, IssueSnapshot, SentryRef
from blametrail_common.testing import fixture_bytes
from blametrail_enricher.records import IncidentRef, build_record
from blametrail_suspects.state import SuspectState

T0 = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
SERVICES = [f"svc-{i:02d}" for i in range(20)]
ROUNDS = 5


def deploys() -> list[DeployRecordedV1]:
    out = []
    for s, service in enumerate(SERVICES):
        for k in range(10):
            finished = T0 - timedelta(hours=7 * k, minutes=5 + s)
            out.append(
                DeployRecordedV1(
                    deploy_id=f"d-{service}-{k}",
                    tenant_id="t",
                    service_id=service,
                    version=f"{service}@1.{k}",
                    environment="production",
                    commit_sha=f"{s:02d}{k:02d}" + "a" * 36,
                    started_at=finished - timedelta(minutes=4),
                    finished_at=finished,
                    author="ana@example.com",
                    changed_paths=[f"services/{service}/app/checkout/views.py", f"x/{k}.py"],
                    recorded_at=finished,
                )
            )
    return out


def incident(i: int) -> tuple[bytes, bytes]:
    """The wire bytes of incident ``i``'s ``incident.opened`` and its enrichment."""
    incident_id, service = f"00000000-0000-4000-8000-{i:012d}", SERVICES[i % len(SERVICES)]
    seen = T0 + timedelta(seconds=i)
    opened = IncidentOpenedV1(
        incident_id=incident_id,
        tenant_id="tenant-0001",
        service_id=service,
        source="sentry_issue",
        severity="sev2",
        status_at=seen,
        sentry=SentryRef(
            connection_id="conn-0001",
            org_slug="acme",
            project_id="4505",
            project_slug=service,
            issue_id=str(7_000_000 + i),
            short_id=f"CHECKOUT-{i}",
            web_url=f"https://acme.sentry.io/issues/{7_000_000 + i}/",
            installation_uuid="0f8c6b1e-2f0a-4a8e-9d5c-3b7a1e2d4c6f",
        ),
        snapshot=IssueSnapshot(
            title="KeyError: 'sku'",
            culprit="checkout.views in create_order",
            level="error",
            status="unresolved",
            substatus="new",
            platform="python",
            first_seen=seen,
            last_seen=seen,
            count=1,
            user_count=1,
            environment="production",
            release=f"{service}@1.0",
        ),
    )
    ref = IncidentRef(incident_id, "tenant-0001", "conn-0001", str(7_000_000 + i))
    event = orjson.loads(fixture_bytes("api/issue-latest-event.response.json"))
    tags = orjson.loads(fixture_bytes("api/issue-tags.response.json"))
    record = build_record(ref, event, tags, seen + timedelta(minutes=1))
    return (
        encode(new_event(opened, key=incident_id, tenant="tenant-0001", produced_at=seen)),
        encode(new_event(record, key=incident_id, tenant="tenant-0001", produced_at=seen)),
    )


def fresh_state() -> SuspectState:
    state = SuspectState()
    for d in deploys():
        state.remember(d)
    return state


def feed(state: SuspectState, data: bytes) -> None:
    p: Any = decode(data).payload
    if isinstance(p, IncidentOpenedV1):
        state.on_incident(p)
    else:
        state.on_enrichment(p)


def bytes_per_incident(wire: list[tuple[bytes, bytes]]) -> float:
    state = fresh_state()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for opened, enriched in wire:
        feed(state, opened)
        feed(state, enriched)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(state.incidents) == len(wire)
    return held / len(wire)


def us_per_event(
    wire: list[bytes], step: Callable[[SuspectState, bytes], None], *, opened: bool
) -> float:
    """Median over rounds of CPU µs per record of ``wire`` into a fresh state; ``opened``: the
    state was fed every incident's opening first (so an enrichment finds its incident)."""
    rounds = []
    for _ in range(ROUNDS):
        state = fresh_state()
        for first, _enriched in WIRE if opened else ():
            feed(state, first)
        gc.collect()
        start = time.process_time()
        for data in wire:
            step(state, data)
        rounds.append((time.process_time() - start) / len(wire) * 1e6)
    return statistics.median(rounds)


def decode_only(state: SuspectState, data: bytes) -> None:
    decode(data)


N = int(sys.argv[1]) if len(sys.argv) > 1 else 5_000
WIRE = [incident(i) for i in range(N)]


def main() -> None:
    print(f"{N} incidents, {len(deploys())} deploys; enrichment {len(WIRE[0][1])} B on the wire")
    print(f"held per incident: {bytes_per_incident(WIRE):,.0f} B (tracemalloc)")
    openings, enrichments = [o for o, _ in WIRE], [e for _, e in WIRE]
    rows = [
        ("incident.opened, decode + on_incident", openings, feed, False),
        ("incident.opened, decode alone", openings, decode_only, False),
        ("incident.enriched, decode + on_enrichment", enrichments, feed, True),
        ("incident.enriched, decode alone", enrichments, decode_only, True),
    ]
    for label, wire, step, opened in rows:
        print(f"{label:42} {us_per_event(wire, step, opened=opened):7.1f} us/event (CPU, median)")


if __name__ == "__main__":
    main()
