"""bench/replay: ``replay projection rebuild`` of N events against a bare consume of the same topics.

The log: N records over the projection's topics (60% incident openings, 25% resolutions of
earlier incidents, 15% audit records), encoded as the services encode them. The bare consume
reads every record from offset zero to the end with a group-less reader and touches each
value; the rebuild is the operator command's code path (shadow tables, checksums, swap) into
a fresh database. Reported: events/s of each (median of the rounds), their ratio, and the
rebuild's wall time. ``BENCH_REPLAY_EVENTS`` (default 1,000,000) and ``BENCH_REPLAY_ROUNDS``
(default 2) change the size.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from blametrail_common.db import migrate
from blametrail_common.events import encode, new_event
from blametrail_common.events.audit import WebhookAuditedV1
from blametrail_common.events.incidents import IncidentOpenedV1, IssueSnapshot, SentryRef
from blametrail_common.kafka import EventProducer, create_producer, open_reader
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.settings import KafkaSettings
from blametrail_devstack.pytest_plugin import create_database, open_infra
from blametrail_projector.projection import PROJECTED_TOPICS
from blametrail_replay.rebuild import rebuild_projection
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

N = int(os.environ.get("BENCH_REPLAY_EVENTS", "1000000"))
ROUNDS = int(os.environ.get("BENCH_REPLAY_ROUNDS", "2"))
T0 = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)


def _templates() -> tuple[dict[str, Any], dict[str, Any]]:
    incident = IncidentOpenedV1(
        incident_id=str(uuid.uuid4()),
        tenant_id="t",
        service_id="svc",
        source="sentry_issue",
        severity="sev2",
        status_at=T0,
        sentry=SentryRef(connection_id="c", issue_id="1", project_slug="checkout-api"),
        snapshot=IssueSnapshot(title="KeyError: 'currency'", culprit="app.checkout", count=1),
    )
    audit = WebhookAuditedV1(
        reason="unmapped",
        detail="no mapping for the project",
        tenant_id="t",
        connection_id="c",
        installation_uuid=None,
        resource="issue",
        action="created",
        project_slug="frontend",
        raw_event_id=str(uuid.uuid4()),
        body_sha256="0" * 64,
        received_at=T0,
    )
    return (
        orjson.loads(encode(new_event(incident, key="k", tenant="t"))),
        orjson.loads(encode(new_event(audit, key="t", tenant="t"))),
    )


def _record(i: int, incident: dict[str, Any], audit: dict[str, Any]) -> tuple[str, bytes, bytes]:
    """Record i of the log: (topic, key, value)."""
    kind = i % 20
    at = (T0 + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
    if kind >= 17:  # 15% audit records
        audit["id"], audit["occurred_at"] = str(uuid.uuid5(uuid.NAMESPACE_OID, f"a{i}")), at
        audit["payload"]["raw_event_id"], audit["payload"]["received_at"] = f"r{i}", at
        return "webhook-audit", b"t", orjson.dumps(audit)
    target = i if kind < 12 else i - 1000  # 25% resolve an incident opened 1,000 records earlier
    incident_id = str(uuid.uuid5(uuid.NAMESPACE_OID, f"i{max(target, 0)}"))
    incident["id"], incident["occurred_at"] = str(uuid.uuid5(uuid.NAMESPACE_OID, f"e{i}")), at
    incident["type"] = "incident.opened" if kind < 12 else "incident.resolved"
    p = incident["payload"]
    p["incident_id"], p["status_at"] = incident_id, at
    p["sentry"]["issue_id"], p["snapshot"]["count"] = str(target), i
    return "incident-events", incident_id.encode(), orjson.dumps(incident)


async def produce(kafka: KafkaSettings, progress: Progress) -> None:
    producer = EventProducer(create_producer(kafka, linger_ms=20), kafka)
    await producer.start()
    incident, audit = _templates()
    task = progress.add_task("producing the log", total=N)
    try:
        batch: dict[str, list[tuple[bytes | None, bytes | None]]] = {}
        for i in range(N):
            topic, key, value = _record(i, incident, audit)
            batch.setdefault(topic, []).append((key, value))
            if (i + 1) % 20000 == 0 or i == N - 1:
                for t, records in batch.items():
                    await producer.send_many_raw(t, records)
                batch = {}
                progress.update(task, completed=i + 1)
    finally:
        await producer.stop()
        progress.remove_task(task)


async def bare(kafka: KafkaSettings, progress: Progress) -> float:
    """Events/s of a group-less consume of every projected record, each value touched."""
    task = progress.add_task("bare consume", total=N)
    try:
        async with open_reader(
            kafka,
            PROJECTED_TOPICS,
            name="bench",
            max_poll_records=5000,
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        ) as log:
            ends = await log.ends()
            began, seen, size = time.perf_counter(), 0, 0
            while seen < N:
                for records in (await log.consumer.getmany(timeout_ms=500)).values():
                    seen += len(records)
                    size += sum(len(r.value or b"") for r in records)
                progress.update(task, completed=seen)
            took = time.perf_counter() - began
            assert seen == sum(ends.values()), (seen, ends)
    finally:
        progress.remove_task(task)
    return N / took


async def measure(bootstrap: str, server_dsn: str) -> None:
    console = Console()
    kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=f"benchr{os.getpid()}.")
    await ensure_topics(kafka)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    bare_rates, rebuild_rates, walls = [], [], []
    with Progress(*columns, console=console) as progress:
        await produce(kafka, progress)
        for r in range(ROUNDS):
            bare_rates.append(await bare(kafka, progress))
            dsn = create_database(server_dsn, f"bt_bench_replay_{os.getpid()}_{r}")
            migrate(dsn)
            task = progress.add_task(f"rebuild, round {r + 1}", total=N)

            def report(done: int, total: int, task: Any = task) -> None:
                progress.update(task, completed=done, total=total)

            began = time.perf_counter()
            summary = await rebuild_projection(kafka, dsn, "bench-projection", report=report)
            walls.append(time.perf_counter() - began)
            rebuild_rates.append(summary.applied / walls[-1])
            progress.remove_task(task)
            assert summary.applied == N, summary
    b, p = statistics.median(bare_rates), statistics.median(rebuild_rates)
    table = Table(
        "measure", "value", "goal", title=f"bench/replay ({N:,} events, median of {ROUNDS})"
    )
    table.add_row("bare consume, events/s", f"{b:,.0f}", "")
    table.add_row("projection rebuild, events/s", f"{p:,.0f}", "")
    table.add_row("ratio rebuild / bare", f"{p / b:.2f}", ">= 0.5")
    table.add_row("rebuild wall time, s", f"{statistics.median(walls):,.1f}", "<= 180")
    console.print(table)


def main() -> None:
    with open_infra(os.environ) as infra:  # sync: it may start a local broker
        asyncio.run(measure(infra.bootstrap, infra.server_dsn))


if __name__ == "__main__":
    main()
