"""bench/replay: ``replay projection rebuild`` of N events against, in the same run, the bare
consume of the same log plus a bare ``COPY`` of the same final rows.

The log: N records over the projection's topics (60% incident openings, 25% resolutions of
earlier incidents, 15% audit records), encoded as the services encode them. Each round:

- bare consume: a group-less reader reads every record from offset zero to the end and touches
  each value;
- bare COPY: the final rows of that log (folded beforehand, not timed, into files) are copied
  into empty tables like the live ones, then the same keys and indexes are built;
- rebuild: the operator command's code path (fold, COPY, indexes, checksums, swap) into a fresh
  database, in a process of its own so that its peak RSS is its own.

Reported: the medians of the rounds, the ratio rebuild / (bare consume + bare COPY) (goal
<= 1.5), the rebuild's wall time (goal < 40 s for 1M) and peak RSS (goal <= 600 MB for 1M), and
the load average (the machine is shared: compare ratios). Each round also prints the rebuild's
phases and the CPU seconds of each part during it (the rebuild's process, its fold workers,
Postgres, the broker) with the cores they used together: a part that waits shows there.
``--events`` / ``BENCH_REPLAY_EVENTS`` (default 1,000,000) and ``--rounds`` /
``BENCH_REPLAY_ROUNDS`` (default 1) change the size.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import multiprocessing as mp
import os
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
from blametrail_common.db import migrate
from blametrail_common.events import encode, new_event
from blametrail_common.events.audit import WebhookAuditedV1
from blametrail_common.events.incidents import IncidentOpenedV1, IssueSnapshot, SentryRef
from blametrail_common.kafka import EventProducer, create_producer, open_reader
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.settings import KafkaSettings
from blametrail_devstack.bench import (
    BenchResult,
    broker_pid,
    cpu_seconds,
    postgres_pid,
    process_tree_cpu,
    write_result,
)
from blametrail_devstack.pytest_plugin import create_database, open_infra
from blametrail_projector.projection import PROJECTED_TOPICS, TABLES
from blametrail_replay import bulk
from blametrail_replay.fold import Fold
from blametrail_replay.pool import peak_rss_mb
from blametrail_replay.rebuild import rebuild_projection
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

N = int(os.environ.get("BENCH_REPLAY_EVENTS", "1000000"))
ROUNDS = int(os.environ.get("BENCH_REPLAY_ROUNDS", "1"))
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
    # 25% resolve an incident opened about 1,000 records earlier: record i - 1012 is of kind
    # 0..4 (an opening) when i is of kind 12..16 (i - 1000 would be a resolution itself)
    target = i if kind < 12 else max(i - 1012, 0)
    incident_id = str(uuid.uuid5(uuid.NAMESPACE_OID, f"i{target}"))
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


def _reader(kafka: KafkaSettings) -> Any:
    return open_reader(
        kafka,
        PROJECTED_TOPICS,
        name="bench",
        max_poll_records=10000,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )


async def bare(kafka: KafkaSettings, progress: Progress) -> float:
    """Seconds of a group-less consume of every projected record, each value touched."""
    task = progress.add_task("bare consume", total=N)
    try:
        async with _reader(kafka) as log:
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
    return took


async def final_rows(kafka: KafkaSettings, folder: Path, progress: Progress) -> dict[str, int]:
    """The log's final rows (the rebuild's own fold), as COPY text in one file per table."""
    task = progress.add_task("folding the final rows (not timed)", total=N)
    fold, counts = Fold(), dict.fromkeys(TABLES, 0)
    files = {t: (folder / f"{t}.copy").open("wb") for t in bulk.STREAMED}
    try:
        async with _reader(kafka) as log:
            seen = 0
            while seen < N:
                for records in (await log.consumer.getmany(timeout_ms=500)).values():
                    seen += len(records)
                    batch = fold.add(records)
                    files["incident_timeline"].write(batch.timeline)
                    files["webhook_audit"].write(batch.audit)
                progress.update(task, completed=seen)
    finally:
        for f in files.values():
            f.close()
        progress.remove_task(task)
    for table in ("incidents", "incident_enrichments", "incident_suspects"):
        with (folder / f"{table}.copy").open("wb") as f:
            f.writelines(fold.lines(table))
    for table in TABLES:
        with (folder / f"{table}.copy").open("rb") as lines:
            counts[table] = sum(1 for _ in lines)
    return counts


def _chunks(path: Path) -> Any:
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            yield chunk


async def _copy_file(folder: Path, table: str, conn: psycopg.AsyncConnection[Any]) -> int:
    # chunks end mid-line: COPY takes a byte stream
    return await bulk.copy_lines(conn, table, "bare_", _chunks(folder / f"{table}.copy"))


async def bare_copy(dsn: str, folder: Path, rows: int, progress: Progress) -> float:
    """Seconds to COPY the final rows into empty tables like the live ones and build the same
    keys and indexes after (no fold, no decoding: the floor of any rebuild's writes)."""
    task = progress.add_task(f"bare COPY of {rows:,} rows + indexes", total=None)
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute("SET synchronous_commit = off")
            await bulk.create_bare(conn, TABLES, "bare_")
            began = time.perf_counter()
            # as parallel as the rebuild's writes: tables on PARALLEL connections at once
            await bulk.in_parallel(dsn, [functools.partial(_copy_file, folder, t) for t in TABLES])
            await bulk.build_keys_parallel(dsn, TABLES, "bare_")
            await bulk.build_secondary_parallel(dsn, TABLES, "bare_")
            return time.perf_counter() - began
    finally:
        progress.remove_task(task)


def _rebuild_child(bootstrap: str, prefix: str, dsn: str, done: Any, total: Any, out: Any) -> None:
    kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix)

    def report(d: int, t: int) -> None:
        done.value, total.value = d, t

    me = os.getpid()
    began, mine, all_mine = time.perf_counter(), cpu_seconds(me), cpu_seconds(me, reaped=True)
    summary = asyncio.run(rebuild_projection(kafka, dsn, "bench-projection", report=report))
    wall = time.perf_counter() - began
    # its own CPU, and its fold workers' (reaped by the pool's close: its children's share)
    own = cpu_seconds(me) - mine
    cpu = {"rebuild process": own, "fold workers": cpu_seconds(me, reaped=True) - all_mine - own}
    # its own peak (VmHWM: ru_maxrss would be this bench's, which it was forked from, when
    # higher) and its fold workers' (each its own peak: their sum is at least the whole's)
    rss = (peak_rss_mb(), *summary.worker_rss_mb)
    out.put((wall, rss, summary.applied, summary.fallback, summary.phases, cpu))


async def rebuild(
    kafka: KafkaSettings, dsn: str, progress: Progress
) -> tuple[float, float, dict[str, float]]:
    """(wall seconds, peak RSS MB, seconds by phase) of the rebuild, in a process of its own
    (with its fold workers' peaks added); prints the CPU seconds of each part meanwhile."""
    postgres, broker = postgres_pid(dsn), broker_pid(kafka.bootstrap_servers)
    if postgres is None:
        raise SystemExit(f"no Postgres here listens for {dsn}: cannot measure its CPU")
    pg_before, broker_before = process_tree_cpu(postgres), cpu_seconds(broker)
    ctx = mp.get_context("spawn")
    done, total, out = ctx.Value("q", 0), ctx.Value("q", N), ctx.Queue()
    child = ctx.Process(
        target=_rebuild_child,
        args=(kafka.bootstrap_servers, kafka.topic_prefix, dsn, done, total, out),
    )
    task = progress.add_task("rebuild", total=N)
    child.start()
    try:
        while child.is_alive() and out.empty():
            progress.update(task, completed=done.value, total=total.value)
            await asyncio.sleep(0.2)
        wall, rss, applied, fallback, phases, cpu = out.get(timeout=60)
    finally:
        child.join()
        progress.remove_task(task)
    cpu["Postgres"] = process_tree_cpu(postgres) - pg_before
    cpu["broker"] = cpu_seconds(broker) - broker_before
    if applied != N or fallback:  # (the live tables are empty here: nothing to be identical to)
        raise RuntimeError(f"rebuild: applied {applied} of {N}, {fallback}")
    parts = " + ".join(f"{mb:,.0f}" for mb in rss)
    progress.console.print(
        f"rebuild peak RSS, MB: {parts} (the rebuild's process + its fold workers)"
    )
    progress.console.print(
        "rebuild CPU, s: "
        + ", ".join(f"{name} {s:.1f}" for name, s in cpu.items())
        + f"; cores used {sum(cpu.values()) / wall:.2f} of {os.cpu_count()}"
    )
    return wall, sum(rss), phases


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
    consumes, copies, walls, rss = [], [], [], []
    with Progress(*columns, console=console) as progress, tempfile.TemporaryDirectory() as tmp:
        await produce(kafka, progress)
        counts = await final_rows(kafka, Path(tmp), progress)
        for r in range(ROUNDS):
            consumes.append(await bare(kafka, progress))
            dsn = create_database(server_dsn, f"bt_bench_replay_{os.getpid()}_{r}")
            migrate(dsn)
            copies.append(await bare_copy(dsn, Path(tmp), sum(counts.values()), progress))
            dsn = create_database(server_dsn, f"bt_bench_rebuild_{os.getpid()}_{r}")
            migrate(dsn)
            wall, peak, phases = await rebuild(kafka, dsn, progress)
            console.print(
                f"round {r + 1}: rebuild phases, s: "
                + ", ".join(f"{name} {s:.1f}" for name, s in phases.items())
            )
            walls.append(wall)
            rss.append(peak)
    c, k, w = statistics.median(consumes), statistics.median(copies), statistics.median(walls)
    rows = ", ".join(f"{t} {n:,}" for t, n in counts.items())
    table = Table(
        "measure", "value", "goal", title=f"bench/replay ({N:,} events, median of {ROUNDS})"
    )
    table.add_row("bare consume, s", f"{c:,.1f}", "")
    table.add_row("bare COPY of the final rows + indexes, s", f"{k:,.1f}", "")
    table.add_row("baseline: bare consume + bare COPY, s", f"{c + k:,.1f}", "")
    table.add_row("rebuild wall time, s", f"{w:,.1f}", "< 40 (1M events)")
    table.add_row("ratio rebuild / baseline", f"{w / (c + k):.2f}", "<= 1.5")
    table.add_row("rebuild, events/s", f"{N / w:,.0f}", "")
    table.add_row("rebuild peak RSS, MB", f"{statistics.median(rss):,.0f}", "<= 600 (1M events)")
    console.print(table)
    console.print(f"final rows: {rows}")
    load = os.getloadavg()
    console.print(
        f"load average (1, 5, 15 min) at the end: {load}; {os.cpu_count()} cores"
        " shared with the broker, Postgres and other work on this machine: compare the ratio."
    )
    peak = statistics.median(rss)
    write_result(
        BenchResult(
            name="replay",
            headline=f"rebuild of {N:,} events, s",
            value=round(w, 1),
            baseline_label="bare consume + bare COPY (same rows, indexes after)",
            baseline=round(c + k, 1),
            goal="<= 1.5x baseline; 1M events: < 40 s, peak RSS <= 600 MB",
            ok=w <= 1.5 * (c + k) and (N < 1_000_000 or (w < 40 and peak <= 600)),
            unit="s",
            notes=f"{N / w:,.0f} events/s, peak RSS {peak:,.0f} MB, load {load[0]:.1f}",
        )
    )


def main() -> None:
    global N, ROUNDS
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument("--events", type=int, default=N, help="log size (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="rounds (default %(default)s)")
    args = parser.parse_args()
    N, ROUNDS = args.events, args.rounds
    with open_infra(os.environ) as infra:  # sync: it may start a local broker
        asyncio.run(measure(infra.bootstrap, infra.server_dsn))


if __name__ == "__main__":
    main()
