"""bench/pipeline: the live projection consuming a prepared topic into Postgres, against the same
SQL effects for the same batches precomputed in memory, in the same run.

The topic: N incident events as the normalizer encodes them (75% openings of new incidents, 25%
resolutions of incidents opened shortly before, so some fold within a batch and some merge into
stored rows). Each round, each variant into a fresh migrated database:

- projector: ``run_into_postgres`` (the projector's loop: poll, apply, offsets in the same
  transaction) with ``Projection.apply`` from offset zero, ``max_records`` as the projector runs
  (2,000); timed from the first batch to the last commit (the group join is not timed). Its
  batches are kept (first round) for the others;
- precomputed: the same batches, their rows computed beforehand (no Kafka, no decoding), written
  with the fastest bulk path measured (``Projection.write``: fold, ``COPY`` into staging, one
  merge per table) and the same offsets upsert, one transaction per batch: the ceiling;
- projector, one batch at a time: the projector's loop without its ``ahead`` (the next batch
  polled and decoded while Postgres writes the one before), as it ran before;
- projector, Python's GC: the projector again with the garbage collector as Python sets it (the
  projector and this benchmark run with ``blametrail_common.gctune.tune_gc``), for what that is
  worth;
- executemany: the same precomputed rows through the previous path (one ``executemany`` of
  per-row upserts per table), for reference.

Reported: medians over the rounds, events/s, the ratios projector / precomputed (goal >= 0.7)
and projector / executemany, and the load average before and after (the machine is shared with
other engineers: compare ratios of one run). ``--events`` / ``BENCH_PIPELINE_EVENTS`` (default
60,000) and ``--rounds`` / ``BENCH_PIPELINE_ROUNDS`` (default 5) change the size. The headline
goes to ``.local/bench/pipeline.json`` for ``make bench``'s summary.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from aiokafka import ConsumerRecord
from blametrail_common.db import migrate
from blametrail_common.events import encode, new_event
from blametrail_common.events.incidents import (
    IncidentOpenedV1,
    IncidentResolvedV1,
    IssueSnapshot,
    SentryRef,
)
from blametrail_common.gctune import tune_gc
from blametrail_common.kafka import EventProducer, create_consumer, create_producer
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.kafka.pgsink import run_into_postgres
from blametrail_common.settings import KafkaSettings
from blametrail_common.topics import topic_name
from blametrail_devstack.bench import BenchResult, cpu_seconds, pythons_gc, write_result
from blametrail_devstack.pytest_plugin import create_database, open_infra
from blametrail_projector.projection import Projection
from blametrail_projector.rows import Rows, rows_for
from executemany import write_executemany
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

T0 = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)
MAX_RECORDS = 2000  # what project_into_postgres polls, as the projector runs
Batch = list[ConsumerRecord[bytes, bytes]]
_UPSERT = (  # pgsink's offsets upsert, the same statement per batch
    "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset, updated_at)"
    " VALUES (%s, %s, %s, %s, now()) ON CONFLICT (group_id, topic, partition)"
    " DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()"
)


def _event(i: int) -> tuple[bytes, bytes]:
    opened = i % 4 != 3
    n = i if opened else i - 7  # a resolution of an incident opened 7 events before
    incident_id = str(uuid.uuid5(uuid.NAMESPACE_OID, f"bench-pipeline-{n}"))
    kind = IncidentOpenedV1 if opened else IncidentResolvedV1
    payload = kind(
        incident_id=incident_id,
        tenant_id="t",
        service_id="svc",
        source="sentry_issue",
        severity="sev2",
        status_at=T0 + timedelta(seconds=i),
        sentry=SentryRef(connection_id="c", issue_id=str(n), short_id=f"CHECKOUT-{n}"),
        snapshot=IssueSnapshot(title=f"KeyError: 'price' ({n})", culprit="pricing", count=1),
    )
    env = new_event(payload, key=incident_id, tenant="t", occurred_at=payload.status_at)
    return incident_id.encode(), encode(env)


async def produce(kafka: KafkaSettings, n: int, progress: Progress) -> None:
    producer = EventProducer(create_producer(kafka, linger_ms=20), kafka)
    await producer.start()
    task = progress.add_task("producing the topic", total=n)
    try:
        for start in range(0, n, 5000):
            batch = [_event(i) for i in range(start, min(start + 5000, n))]
            await producer.send_many_raw("incident-events", batch)
            progress.advance(task, len(batch))
    finally:
        await producer.stop()
        progress.remove_task(task)


class Cost:
    """Wall time and CPU seconds of this process and of one Postgres backend, between
    :meth:`start` and :meth:`stop` (CPU per event is what a loaded machine changes least)."""

    def __init__(self) -> None:
        self.wall = self.client = self.server = 0.0
        self._at: tuple[float, float, float] | None = None
        self._pid = 0

    def start(self, backend_pid: int) -> None:
        self._pid = backend_pid
        self._at = (time.perf_counter(), time.process_time(), cpu_seconds(backend_pid))

    def stop(self) -> None:
        assert self._at is not None
        wall, client, server = self._at
        self.wall = time.perf_counter() - wall
        self.client = time.process_time() - client
        self.server = cpu_seconds(self._pid) - server


def _fresh_db(server_dsn: str, label: str) -> str:
    dsn = create_database(server_dsn, f"bt_bench_pipe_{os.getpid()}_{label}")
    migrate(dsn)
    return dsn


def _drop(server_dsn: str, dsn: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"'.encode())


async def projector(
    kafka: KafkaSettings, dsn: str, n: int, progress: Progress, label: str, *, ahead: bool = True
) -> tuple[Cost, list[Batch]]:
    """The cost of the projector's own loop over the topic, and the batches it applied;
    ``ahead``: the next batch decoded while the one before is written, as the projector runs."""
    group, stop = f"bench-{uuid.uuid4().hex[:8]}", asyncio.Event()
    projection, cost = Projection(None), Cost()
    batches: list[Batch] = []
    task = progress.add_task(label, total=n)

    async def apply(conn: psycopg.AsyncConnection[Any], records: Sequence[Any]) -> None:
        if not batches:
            cost.start(conn.info.backend_pid)
        await projection.apply(conn, records)
        batches.append(list(records))
        progress.advance(task, len(records))
        if sum(map(len, batches)) >= n:
            cost.stop()  # at the last batch, while its backend still runs (before its commit)
            stop.set()  # the loop ends after this batch commits

    consumer = create_consumer(kafka, [], group)
    await consumer.start()
    try:
        topics = [topic_name("incident-events", kafka.topic_prefix)]
        await run_into_postgres(
            consumer,
            topics,
            dsn,
            group,
            apply,
            stop,
            max_records=MAX_RECORDS,
            ahead=projection.ahead if ahead else None,
        )
    finally:
        await consumer.stop()
        progress.remove_task(task)
    assert projection.refused == 0, "the projector refused records of a clean topic"
    return cost, batches


WriteRows = Callable[[psycopg.AsyncConnection[Any], Rows], Awaitable[None]]


async def precomputed(
    dsn: str, batches: list[tuple[Rows, list[tuple[str, int, int]]]], write: WriteRows
) -> Cost:
    """The cost of writing the precomputed rows of each batch and its offsets, one transaction
    per batch."""
    cost = Cost()
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cost.start(conn.info.backend_pid)
        for rows, offsets in batches:
            async with conn.transaction():
                await write(conn, rows)
                async with conn.cursor() as cur:
                    await cur.executemany(_UPSERT, [("bench", *o) for o in offsets])
        cost.stop()
    return cost


def _prepare(batches: list[Batch]) -> list[tuple[Rows, list[tuple[str, int, int]]]]:
    out = []
    for records in batches:
        last: dict[tuple[str, int], int] = {}
        for r in records:
            last[(r.topic, r.partition)] = r.offset + 1
        out.append((rows_for(records), [(t, p, o) for (t, p), o in last.items()]))
    return out


async def _count(dsn: str) -> tuple[int, int]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT (SELECT count(*) FROM incidents), (SELECT count(*) FROM incident_timeline)"
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


VARIANTS = {
    "projector": "projector (Kafka -> decode -> staged merge)",
    "projector_plain": "the same, one batch at a time (no ahead)",
    "projector_pygc": "the same projector, Python's GC",
    "precomputed": "precomputed rows, staged COPY + merge",
    "executemany": "precomputed rows, executemany (previous path)",
}


async def measure(bootstrap: str, server_dsn: str, n: int, rounds: int) -> None:
    console = Console(width=max(Console().width, 130))  # the table whole, in a log too
    kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=f"benchp{os.getpid()}.")
    await ensure_topics(kafka)
    load_before = _load()
    costs: dict[str, list[Cost]] = {k: [] for k in VARIANTS}
    prepared: list[tuple[Rows, list[tuple[str, int, int]]]] = []
    expected: tuple[int, int] | None = None

    async def run_projector(dsn: str, label: str) -> Cost:
        nonlocal prepared
        cost, batches = await projector(kafka, dsn, n, progress, label)
        prepared = prepared or _prepare(batches)
        return cost

    async def run_projector_plain(dsn: str, label: str) -> Cost:
        return (await projector(kafka, dsn, n, progress, label, ahead=False))[0]

    async def run_projector_pygc(dsn: str, label: str) -> Cost:
        with pythons_gc():
            return (await projector(kafka, dsn, n, progress, label))[0]

    runs: dict[str, Callable[[str, str], Awaitable[Cost]]] = {
        "projector": run_projector,
        "projector_plain": run_projector_plain,
        "projector_pygc": run_projector_pygc,
        "precomputed": lambda url, _: precomputed(url, prepared, Projection(None).write),
        "executemany": lambda url, _: precomputed(url, prepared, write_executemany),
    }
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console) as progress:
        await produce(kafka, n, progress)
        task = progress.add_task("rounds", total=rounds * len(VARIANTS))
        for r in range(rounds):
            for name in VARIANTS:
                progress.update(task, description=f"round {r + 1} of {rounds}: {name}")
                dsn = _fresh_db(server_dsn, f"{name}_{r}")
                try:
                    costs[name].append(await runs[name](dsn, f"{name}, round {r + 1}"))
                    counts = await _count(dsn)
                finally:
                    _drop(server_dsn, dsn)
                expected = expected or counts
                assert counts == expected, f"{name} wrote {counts} rows, projector {expected}"
                progress.advance(task)
    console.print(_table(costs, n, rounds, expected))
    write_result(_result(costs, n))
    console.print(
        f"load average before {load_before}, after {_load()}, on {os.cpu_count()} cores shared"
        " with other engineers' work and the broker and Postgres: wall rates move with the load,"
        " so compare the ratios of one run, and the CPU per event (which moves less)."
    )


def _result(costs: dict[str, list[Cost]], n: int) -> BenchResult:
    """The headline for ``make bench``'s summary (``.local/bench/pipeline.json``)."""
    rate = {k: statistics.median(n / c.wall for c in v) for k, v in costs.items()}
    ratio = statistics.median(
        p.wall and b.wall / p.wall
        for p, b in zip(costs["projector"], costs["precomputed"], strict=True)
    )
    cpu = {
        k: statistics.median((c.client + c.server) / n * 1e6 for c in v) for k, v in costs.items()
    }
    return BenchResult(
        name="pipeline",
        headline="projector events/s (Kafka -> Postgres)",
        value=rate["projector"],
        baseline_label="same batches precomputed, staged merge",
        baseline=rate["precomputed"],
        goal=">= 0.7x baseline and >= 20,000/s",
        ok=ratio >= 0.7 and rate["projector"] >= 20_000,
        unit="/s",
        notes=(
            f"median ratio of rounds {ratio:.2f}; CPU µs/event (client + Postgres): projector"
            f" {cpu['projector']:.0f} (one batch at a time {cpu['projector_plain']:.0f},"
            f" Python's GC {cpu['projector_pygc']:.0f}), precomputed"
            f" {cpu['precomputed']:.0f}, previous executemany"
            f" path {cpu['executemany']:.0f}; load {_load()} on {os.cpu_count()} shared cores"
        ),
    )


def _table(costs: dict[str, list[Cost]], n: int, rounds: int, rows: Any) -> Table:
    table = Table(
        "variant",
        "events/s (median)",
        "events/s, each round",
        "client CPU µs/event",
        "Postgres CPU µs/event",
        title=f"bench/pipeline: {n:,} incident events, {rounds} rounds (rows written: {rows})",
    )
    rate = {k: [n / c.wall for c in v] for k, v in costs.items()}
    for name, label in VARIANTS.items():
        table.add_row(
            label,
            f"{statistics.median(rate[name]):,.0f}",
            " ".join(f"{x:,.0f}" for x in rate[name]),
            f"{statistics.median(c.client for c in costs[name]) / n * 1e6:.1f}",
            f"{statistics.median(c.server for c in costs[name]) / n * 1e6:.1f}",
        )
    for base, goal in (
        ("precomputed", ">= 0.7 (goal)"),
        ("executemany", ""),
        ("projector_plain", "(ahead / none)"),
        ("projector_pygc", "(tuned GC / Python's)"),
    ):
        ratios = [p / b for p, b in zip(rate["projector"], rate[base], strict=True)]
        table.add_row(
            f"ratio projector / {base} {goal}",
            f"{statistics.median(ratios):.2f}",
            " ".join(f"{x:.2f}" for x in ratios),
            "",
            "",
        )
    table.add_row("goal: projector events/s", ">= 20,000", "", "", "")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events", type=int, default=int(os.environ.get("BENCH_PIPELINE_EVENTS", "60000"))
    )
    parser.add_argument(
        "--rounds", type=int, default=int(os.environ.get("BENCH_PIPELINE_ROUNDS", "5"))
    )
    args = parser.parse_args()
    tune_gc()  # as the projector runs (its composition root)
    with open_infra(os.environ) as infra:  # sync: it may start a local broker
        asyncio.run(measure(infra.bootstrap, infra.server_dsn, args.events, args.rounds))


if __name__ == "__main__":
    main()
