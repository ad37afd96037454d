"""The bulk rebuild on the real broker and Postgres: the tables it swaps in are the live
projection's, byte for byte (the checksum query), on logs with resolutions, reopenings,
duplicates, out-of-order events, enrichments, suspects, audit records, links and junk;
also when the fold bound is reached and when Postgres refuses a folded row."""

from __future__ import annotations

import asyncio
import gc
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from blametrail_common.db import migrate
from blametrail_common.events import encode, new_event
from blametrail_common.events.audit import WebhookAuditedV1
from blametrail_common.events.deploys import IncidentSuspectsV1
from blametrail_common.events.enrichment import (
    IncidentEnrichedV1,
    IncidentEnrichmentFailedV1,
    IncidentLinkedV1,
)
from blametrail_common.events.incidents import (
    Assignee,
    IncidentAssignedV1,
    IncidentEvent,
    IncidentMutedV1,
    IncidentOpenedV1,
    IncidentReopenedV1,
    IncidentResolvedV1,
    IncidentUpdatedV1,
    IssueSnapshot,
    SentryRef,
)
from blametrail_common.kafka import EventProducer, create_producer
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.settings import KafkaSettings
from blametrail_devstack.logtools import end_offsets, project_until, table_checksums
from blametrail_devstack.pytest_plugin import Infra, create_database
from blametrail_devstack.testkit import until
from blametrail_projector.projection import PROJECTED_TOPICS, TABLES, Projection
from blametrail_replay import bulk
from blametrail_replay.fold import Batch
from blametrail_replay.pool import FOLDED, FoldPool, Record, WorkerFailed, worker_of
from blametrail_replay.rebuild import CHECKSUM_KEYS, RebuildSummary, rebuild_projection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

T0 = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)
TITLES = ["KeyError", "tab\there", "new\nline\r", "back\\slash \\N", "nul \x00", "emoji \U0001f389"]
KINDS: dict[str, type[IncidentEvent]] = {
    "opened": IncidentOpenedV1,
    "updated": IncidentUpdatedV1,
    "resolved": IncidentResolvedV1,
    "reopened": IncidentReopenedV1,
    "assigned": IncidentAssignedV1,
    "muted": IncidentMutedV1,
}
Log = list[tuple[str, bytes, bytes]]  # (topic, key, value) in log order


def _incident_id(n: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"rebuild-{n}"))


def incident_event(
    kind: str, n: int, second: int, title: str = "KeyError", count: int | None = 1, **more: Any
) -> IncidentEvent:
    extra: dict[str, Any] = {
        "updated": {"reason": "alert"},
        "resolved": {"resolution_type": None},
        "assigned": {"assignee": Assignee(type="user", id=more.get("assignee") or "u1")},
        "muted": {"details": {}},
    }.get(kind, {})
    return KINDS[kind](
        incident_id=_incident_id(n),
        tenant_id="t",
        service_id="svc",
        source="sentry_issue",
        severity=more.get("severity", "sev2"),
        status_at=T0 + timedelta(seconds=second),
        sentry=SentryRef(
            connection_id="c",
            issue_id=str(n),
            web_url=f"https://acme.sentry.io/issues/{n}/" if more.get("web_url") else None,
        ),
        snapshot=IssueSnapshot(
            title=title,
            culprit=more.get("culprit"),
            first_seen=T0 - timedelta(minutes=second % 3),
            last_seen=T0 + timedelta(milliseconds=more.get("last_seen_ms", 0)),
            count=count,
        ),
        **extra,
    )


def enriched(n: int, minute: int, title: str) -> IncidentEnrichedV1:
    return IncidentEnrichedV1(
        incident_id=_incident_id(n),
        tenant_id="t",
        connection_id="c",
        sentry_issue_id=str(n),
        sentry_event_id=None,
        fetched_at=T0 + timedelta(minutes=minute),
        title=title,
        message=None,
        platform="python",
        environment=None,
        release=None,
        tags=[],
        event_tags=[],
        exceptions=[],
        breadcrumbs=[],
        user=None,
        contexts={},
        event_created_at=None,
        event_received_at=None,
        links={},
        truncated=[],
    )


def failed(n: int, minute: int) -> IncidentEnrichmentFailedV1:
    return IncidentEnrichmentFailedV1(
        incident_id=_incident_id(n),
        tenant_id="t",
        sentry_issue_id=str(n),
        reason=f"HTTP 500 \t{minute}",
        attempts=3,
        failed_at=T0 + timedelta(minutes=minute),
    )


def suspects(n: int, minute: int) -> IncidentSuspectsV1:
    return IncidentSuspectsV1(
        incident_id=_incident_id(n),
        tenant_id="t",
        computed_at=T0 + timedelta(minutes=minute),
        candidates=minute,
        suspects=[],
    )


def linked(n: int, external: str, url: str | None) -> IncidentLinkedV1:
    return IncidentLinkedV1(
        incident_id=_incident_id(n),
        tenant_id="t",
        connection_id="c",
        sentry_issue_id=str(n),
        external_issue_id=external,
        sentry_web_url=url,
        incident_url="https://blametrail.example/i",
        linked_at=T0,
    )


def audit(i: int) -> WebhookAuditedV1:
    return WebhookAuditedV1(
        reason="unmapped",
        detail=f"no mapping \\ {i}\n",
        tenant_id="t",
        connection_id="c",
        installation_uuid=None,
        resource="issue",
        action="created",
        project_slug="front\tend",
        raw_event_id=f"r{i}",
        body_sha256="0" * 64,
        received_at=T0 + timedelta(seconds=i),
    )


_TOPIC = {
    IncidentEnrichedV1: "incident-enrichments",
    IncidentEnrichmentFailedV1: "incident-enrichments",
    IncidentLinkedV1: "incident-enrichments",
    IncidentSuspectsV1: "incident-suspects",
    WebhookAuditedV1: "webhook-audit",
}


def record(payload: Any, i: int) -> tuple[str, bytes, bytes]:
    key = getattr(payload, "incident_id", "t")
    env = new_event(
        payload,
        key=key,
        tenant="t",
        event_id=uuid.uuid5(uuid.NAMESPACE_OID, f"event-{i}"),
        produced_at=T0,
    )
    return _TOPIC.get(type(payload), "incident-events"), key.encode(), encode(env)


@st.composite
def logs(draw: st.DrawFn) -> Log:
    """A few incidents' histories shuffled together (out of order across seconds and kinds),
    with redeliveries, enrichments (ties), suspects, links, audit records and junk."""
    payloads: list[Any] = []
    for n in range(draw(st.integers(1, 4))):
        for _ in range(draw(st.integers(1, 6))):
            payloads.append(
                incident_event(
                    draw(st.sampled_from(list(KINDS))),
                    n,
                    draw(st.integers(0, 3)),
                    title=draw(st.sampled_from(TITLES)),
                    count=draw(st.none() | st.integers(1, 4)),
                    culprit=draw(st.none() | st.sampled_from(["x", "y\\z"])),
                    severity=draw(st.sampled_from(["sev1", "sev2"])),
                    assignee=draw(st.sampled_from(["u1", "u2"])),
                    web_url=draw(st.booleans()),
                    last_seen_ms=draw(st.sampled_from([0, 250, 999])),
                )
            )
        for _ in range(draw(st.integers(0, 3))):
            minute = draw(st.integers(0, 2))
            payloads.append(
                draw(
                    st.sampled_from(
                        [
                            enriched(n, minute, draw(st.sampled_from(TITLES))),
                            failed(n, minute),
                            suspects(n, minute),
                            linked(n, f"X-{minute}", draw(st.none() | st.just("https://s/1"))),
                        ]
                    )
                )
            )
    payloads += [audit(i) for i in range(draw(st.integers(0, 3)))]
    out = [record(p, i) for i, p in enumerate(payloads)]
    out = draw(st.permutations(out))
    for _ in range(draw(st.integers(0, 3))):  # redeliveries, later in the log
        out.append(draw(st.sampled_from(out)))
    if draw(st.booleans()):
        out.insert(draw(st.integers(0, len(out))), ("incident-events", b"junk", b"\xff junk"))
    return out


# -- harness -------------------------------------------------------------------------------------


async def _links(dsn: str) -> list[Any]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT incident_id, connection_id, sentry_issue_id, web_url, external_issue_id,"
            " linked_at FROM sentry_issue_links ORDER BY 1, 2, 3"
        )
        return await cur.fetchall()


async def _compression(dsn: str) -> dict[str, str]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT attrelid::regclass::text || '.' || attname, attcompression FROM pg_attribute"
            " WHERE attrelid::regclass::text = ANY(%s) AND attnum > 0 AND NOT attisdropped",
            (list(TABLES),),
        )
        return {name: method for name, method in await cur.fetchall()}


async def _compare(
    kafka_settings: KafkaSettings, infra: Infra, log: Log, **options: Any
) -> RebuildSummary:
    """Project ``log`` live into one database, rebuild it into a fresh one, and rebuild the
    live one in place; every table must be the same in the three."""
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers,
        topic_prefix=f"rb{uuid.uuid4().hex[:6]}.",
    )
    await ensure_topics(kafka)
    live = create_database(infra.server_dsn, f"bt_rbl_{uuid.uuid4().hex[:6]}")
    scratch = create_database(infra.server_dsn, f"bt_rbs_{uuid.uuid4().hex[:6]}")
    migrate(live)
    migrate(scratch)
    compression = await _compression(live)
    assert compression["incident_enrichments.record"] == "l"
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    try:
        for topic, key, value in log:  # one by one: the log order is the test's
            await producer.send_raw(topic, key, value)
    finally:
        await producer.stop()
    end = await end_offsets(kafka, PROJECTED_TOPICS)
    await project_until(kafka, live, "live", PROJECTED_TOPICS, Projection(None).apply, end)
    expected = await table_checksums(live, CHECKSUM_KEYS)

    summary = await rebuild_projection(kafka, scratch, "never-ran", batch=7, **options)
    assert await table_checksums(scratch, CHECKSUM_KEYS) == expected
    assert await _links(scratch) == await _links(live)
    assert summary.applied == len(log)

    in_place = await rebuild_projection(kafka, live, "live", **options)
    assert in_place.identical, (in_place.live, in_place.rebuilt)
    assert await table_checksums(live, CHECKSUM_KEYS) == expected
    assert in_place.refused == summary.refused
    # the swapped-in tables keep the columns' compression (lz4: migration 0037)
    assert await _compression(live) == await _compression(scratch) == compression
    return summary


# -- tests ---------------------------------------------------------------------------------------


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(log=logs())
def test_a_rebuild_gives_the_live_projections_tables_for_any_log(
    kafka_settings: KafkaSettings, infra: Infra, log: Log
) -> None:
    summary = asyncio.run(_compare(kafka_settings, infra, log))
    assert summary.fallback == ""
    assert summary.folded == len(log)
    assert summary.refused == sum(1 for _, _, v in log if v.startswith(b"\xff"))


def _fixed_log() -> Log:
    payloads: list[Any] = [
        incident_event("resolved", 0, 5, title="resolved first"),  # before its opening
        incident_event("opened", 0, 0, web_url=True),
        incident_event("reopened", 0, 9, count=4, last_seen_ms=999),
        incident_event("opened", 1, 0, title="tab\there"),
        incident_event("assigned", 1, 2, assignee="u2"),
        incident_event("muted", 2, 1),
        incident_event("opened", 2, 0),
        failed(0, 1),
        enriched(0, 2, "e"),
        failed(0, 3),
        enriched(1, 1, "a"),
        enriched(1, 1, "b"),  # a tie: the later one wins
        suspects(0, 2),
        suspects(0, 1),
        linked(0, "X-1", "https://s/1"),
        linked(0, "X-2", None),
        audit(1),
        audit(2),
    ]
    out = [record(p, i) for i, p in enumerate(payloads)]
    return [*out, out[1], out[8], out[16], ("incident-events", b"junk", b"\xff junk")]


@pytest.mark.parametrize("workers", [0, 2])  # in this process; in fold processes, whose count of
# keys comes back after their batches (the rebuild waits for it near the bound)
async def test_past_the_fold_bound_the_rest_goes_the_live_way_with_the_same_tables(
    kafka_settings: KafkaSettings, infra: Infra, workers: int
) -> None:
    summary = await _compare(
        kafka_settings, infra, _fixed_log(), fold_max_incidents=2, fold_workers=workers
    )
    assert "BLAMETRAIL_REPLAY_FOLD_MAX_INCIDENTS" in summary.fallback
    assert 0 < summary.folded < summary.applied
    assert summary.keys >= 2
    assert summary.refused == 1


@pytest.mark.parametrize("workers", [0, 1, 3])  # in this process; one or more fold processes
async def test_duplicates_are_dropped_as_the_live_projection_drops_them(
    kafka_settings: KafkaSettings, infra: Infra, workers: int
) -> None:
    summary = await _compare(kafka_settings, infra, _fixed_log(), fold_workers=workers)
    assert summary.fallback == ""
    assert len(summary.worker_rss_mb) == workers
    assert summary.duplicates == 2  # a redelivered incident event and a redelivered audit record
    assert summary.refused == 1


async def test_a_row_postgres_refuses_makes_the_rebuild_go_the_live_way_from_zero(
    kafka_settings: KafkaSettings, infra: Infra
) -> None:
    """A count beyond bigint: the live projection dead-letters that record, so must the rebuild."""
    log = _fixed_log()
    log.insert(3, record(incident_event("updated", 1, 3, count=2**70), 100))
    summary = await _compare(kafka_settings, infra, log)
    assert "Postgres refused a folded row" in summary.fallback
    assert "bigint" in summary.fallback
    assert summary.refused == 2


async def test_an_incident_under_two_keys_is_rebuilt_the_live_way(
    kafka_settings: KafkaSettings, infra: Infra
) -> None:
    """A topic not keyed by incident (here one incident's events under two record keys that
    two workers fold): each worker would hold a part of the incident, so the rebuild sees the
    key twice and goes the live way from zero."""
    keys = [f"k{i}".encode() for i in range(50)]
    first = next(k for k in keys if worker_of(k, 2) == 0)
    second = next(k for k in keys if worker_of(k, 2) == 1)
    events = [incident_event("opened", 7, 0), incident_event("resolved", 7, 5, count=3)]
    log = []
    for i, (event, key) in enumerate(zip(events, (first, second), strict=True)):
        topic, _, value = record(event, 200 + i)
        log.append((topic, key, value))
    summary = await _compare(kafka_settings, infra, [*_fixed_log(), *log], fold_workers=2)
    assert "FoldedDuplicate" in summary.fallback


def test_the_keys_are_shared_out_between_the_workers() -> None:
    """Each worker gets a fair share of the keys, a key the same worker in every run (pinned:
    ``hash()``, salted per process, would not be), and a record without a key the first."""
    keys = [str(uuid.uuid5(uuid.NAMESPACE_OID, f"i{i}")).encode() for i in range(3000)]
    for workers in (1, 2, 3):
        shares = [0] * workers
        for key in keys:
            shares[worker_of(key, workers)] += 1
        assert min(shares) > 0.9 * len(keys) / workers, shares
    assert [worker_of(f"k{i}".encode(), 3) for i in range(8)] == [0, 1, 0, 2, 2, 1, 0, 1]
    assert worker_of(None, 3) == 0


# -- the fold pool -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "falls_back"),
    [
        (psycopg.DataError("a streamed row refused (the test's)"), True),  # as a refused row
        (psycopg.OperationalError("the connection dropped (the test's)"), False),  # raised
    ],
)
async def test_a_failing_sink_fails_the_fold_pool_instead_of_waiting_on_it(
    kafka_settings: KafkaSettings,
    infra: Infra,
    monkeypatch: pytest.MonkeyPatch,
    error: psycopg.Error,
    falls_back: bool,
) -> None:
    """The streamed COPY fails at its first write: the readers of 1 worker soon hold all the
    room of unwritten batches, and the rebuild must not wait on them (many batches of 7)."""

    async def write(self: bulk.BulkSink, batch: Batch) -> None:
        raise type(error)(*error.args)  # a new one: the test's own would keep its task alive

    monkeypatch.setattr(bulk.BulkSink, "write", write)
    unretrieved: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, ctx: unretrieved.append(ctx))
    log = [*_fixed_log(), *(record(audit(i), 300 + i) for i in range(60))]
    if falls_back:
        summary = await asyncio.wait_for(_compare(kafka_settings, infra, log, fold_workers=1), 120)
        assert "Postgres refused a folded row (DataError" in summary.fallback
        assert summary.folded == 0
    else:
        with pytest.raises(psycopg.OperationalError, match="dropped"):
            await asyncio.wait_for(_compare(kafka_settings, infra, log, fold_workers=1), 120)
    gc.collect()  # a task whose exception nobody read says so when collected
    assert unretrieved == []


_ELSEWHERE = """
class Elsewhere(Exception):
    pass


class TwoArguments(Exception):  # pickles, but unpickles as TwoArguments(message): a TypeError
    def __init__(self, a, b):
        super().__init__(f"{a} and {b}")
"""


class _Raise:
    """A value that raises ``bt_elsewhere.<name>`` in the worker that unpickles it."""

    def __init__(self, name: str, args: str) -> None:
        self.code = f"import bt_elsewhere; raise bt_elsewhere.{name}({args})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (self.code,))


@pytest.mark.parametrize(
    ("name", "args", "here", "expected"),
    [
        ("Elsewhere", "", False, "ModuleNotFoundError"),  # a frame this process cannot read
        ("TwoArguments", "1, 2", True, "TwoArguments"),  # an error that does not unpickle
    ],
)
async def test_a_worker_error_that_cannot_be_read_here_fails_the_pool(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    args: str,
    here: bool,
    expected: str,
) -> None:
    (tmp_path / "bt_elsewhere.py").write_text(_ELSEWHERE)
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), *([path] if path else [])]))
    if here:
        monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "bt_elsewhere", raising=False)
    pool = FoldPool(1)
    try:
        await pool.start()
        await pool.add([Record("incident-events", 0, 0, _Raise(name, args))])  # type: ignore[arg-type]
        with pytest.raises(WorkerFailed, match=expected):
            await asyncio.wait_for(pool.drain(), 30)
    finally:
        await pool.close()


async def test_one_partitions_records_are_folded_by_every_worker() -> None:
    """A poll of one partition (as most polls are) gives each worker the records of its keys:
    both fold at once, where a worker per partition left the other one waiting."""
    payloads = [incident_event("opened", n, 0) for n in range(20)]
    records = []
    for i, p in enumerate(payloads):
        _, key, value = record(p, i)
        records.append(Record("incident-events", 0, i, value, key))
    assert {worker_of(r.key, 2) for r in records} == {0, 1}  # the test's keys reach both
    pool = FoldPool(2)
    try:
        await pool.start()
        await pool.add(records)
        await asyncio.wait_for(pool.drain(), 30)
        batches = [pool.results.get_nowait() for _ in range(pool.results.qsize())]
        assert len(batches) == 2  # one a worker
        assert pool.keys == 20  # each incident in one of them
        lines = b"".join(b.timeline for b in batches if isinstance(b, Batch)).splitlines()
        assert len(lines) == 20
    finally:
        await pool.close()


async def test_a_workers_folded_rows_wait_in_its_pipe_until_read() -> None:
    """After ``end`` a worker's reader holds a few messages, not all it is sent; all arrive."""
    payloads = [incident_event("opened", 0, 0), enriched(0, 1, "e"), suspects(0, 1)]
    records = [Record("incident-events", 0, i, record(p, i)[2]) for i, p in enumerate(payloads)]
    pool = FoldPool(1)
    try:
        await pool.start()
        await pool.add(records)
        await asyncio.wait_for(pool.drain(), 30)
        await pool.end()
        ends = pool._ends[0]  # 7 messages: rows of each table, each table's end, then done

        async def full() -> bool:
            return ends.full()

        await until("the worker's reader to hold its few messages", full, 30, every_s=0.01)
        texts = {}
        for table in FOLDED:
            texts[table] = b""
            async for chunk in pool.rows(0, table):
                assert ends.qsize() <= 4
                texts[table] += chunk
        assert await pool.links(0) == []
        assert all(_incident_id(0).encode() in texts[table] for table in FOLDED)
    finally:
        await pool.close()
