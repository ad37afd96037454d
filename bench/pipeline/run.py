"""bench/pipeline: projection rows/s in batch mode against a bare passthrough, in the same run.

Both read the same topic of N pre-encoded incident events from offset zero into Postgres with
offsets in the same transaction (``pgsink``): the bare passthrough decodes nothing and inserts
(partition, offset, bytes) per record; the projection decodes, sanitizes and upserts incidents
and timeline rows. Reported: median rows/s of 3 rounds each, and the ratio.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from blametrail_common.db import migrate
from blametrail_common.events import encode, new_event
from blametrail_common.events.incidents import IncidentOpenedV1, IssueSnapshot, SentryRef
from blametrail_common.kafka import EventProducer, create_consumer, create_producer
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.kafka.pgsink import run_into_postgres
from blametrail_common.settings import KafkaSettings
from blametrail_common.topics import topic_name
from blametrail_devstack.pytest_plugin import create_database, open_infra
from blametrail_projector.projection import Projection
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

N, ROUNDS = 100_000, 3
T0 = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)


async def produce(kafka: KafkaSettings) -> None:
    producer = EventProducer(create_producer(kafka, linger_ms=20), kafka)
    await producer.start()
    batch = []
    for i in range(N):
        incident_id = str(uuid.uuid5(uuid.NAMESPACE_OID, f"bench-{i}"))
        payload = IncidentOpenedV1(
            incident_id=incident_id,
            tenant_id="t",
            service_id="svc",
            source="sentry_issue",
            severity="sev2",
            status_at=T0 + timedelta(seconds=i),
            sentry=SentryRef(connection_id="c", issue_id=str(i)),
            snapshot=IssueSnapshot(title=f"KeyError {i}", count=i),
        )
        batch.append(
            (incident_id.encode(), encode(new_event(payload, key=incident_id, tenant="t")))
        )
        if len(batch) == 5000:
            await producer.send_many_raw("incident-events", batch)
            batch = []
    await producer.send_many_raw("incident-events", batch)
    await producer.stop()


async def bare(conn: psycopg.AsyncConnection[Any], records: Sequence[Any]) -> None:
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO bench_raw (part, off, value) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            [(r.partition, r.offset, r.value) for r in records],
        )


async def timed(
    kafka: KafkaSettings, dsn: str, apply: Any, count_sql: str, progress: Progress, label: str
) -> float:
    group = f"bench-{uuid.uuid4().hex[:8]}"
    stop = asyncio.Event()
    consumer = create_consumer(kafka, [], group)
    await consumer.start()
    task = progress.add_task(label, total=N)

    async def watch() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            while True:
                row = await (await conn.execute(count_sql)).fetchone()
                done = int(row[0]) if row else 0
                progress.update(task, completed=done)
                if done >= N:
                    stop.set()
                    return
                await asyncio.sleep(0.05)

    began = time.perf_counter()
    watcher = asyncio.create_task(watch())
    await run_into_postgres(
        consumer,
        [topic_name("incident-events", kafka.topic_prefix)],
        dsn,
        group,
        apply,
        stop,
        max_records=5000,
    )
    took = time.perf_counter() - began
    watcher.cancel()
    await consumer.stop()
    progress.remove_task(task)
    return N / took


def main() -> None:
    with open_infra(os.environ) as infra:  # sync: it may start a local broker
        asyncio.run(measure(infra.bootstrap, infra.server_dsn))


async def measure(bootstrap: str, server_dsn: str) -> None:
    console = Console()
    kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=f"benchp{os.getpid()}.")
    await ensure_topics(kafka)
    with console.status(f"producing {N:,} incident events"):
        await produce(kafka)
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    bare_rates, proj_rates = [], []
    with Progress(console=console) as progress:
        for r in range(ROUNDS):
            dsn = create_database(server_dsn, f"bt_bench_{os.getpid()}_{r}")
            migrate(dsn)
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute(
                    "CREATE TABLE bench_raw (part int, off bigint, value bytea, PRIMARY KEY (part, off))"
                )
            bare_rates.append(
                await timed(
                    kafka,
                    dsn,
                    bare,
                    "SELECT count(*) FROM bench_raw",
                    progress,
                    f"bare passthrough, round {r + 1}",
                )
            )
            proj_rates.append(
                await timed(
                    kafka,
                    dsn,
                    Projection(producer).apply,
                    "SELECT count(*) FROM incidents",
                    progress,
                    f"projection, round {r + 1}",
                )
            )
    await producer.stop()
    b, p = statistics.median(bare_rates), statistics.median(proj_rates)
    table = Table(
        "measure",
        "value",
        "goal",
        title=f"bench/pipeline ({N:,} events, median of {ROUNDS} rounds)",
    )
    table.add_row("bare passthrough (consume -> insert), records/s", f"{b:,.0f}", "")
    table.add_row("projection (incident + timeline rows), events/s", f"{p:,.0f}", "")
    table.add_row("projection rows/s (2 rows per event)", f"{2 * p:,.0f}", ">= 10,000")
    table.add_row("ratio projection / bare (events)", f"{p / b:.2f}", ">= 0.5")
    console.print(table)


if __name__ == "__main__":
    main()
