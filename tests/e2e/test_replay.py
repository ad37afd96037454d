"""``blametrail replay`` on the real broker and Postgres: reset, projection rebuild, reprocess-ignored."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer
from blametrail_common.cli import build_parser
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_common.db import migrate
from blametrail_common.events import (
    ConnectionStateV1,
    MappingStateV1,
    ServiceStateV1,
    WebhookReceivedV1,
    body_sha256,
    decode,
    mapping_key,
    new_event,
)
from blametrail_common.events.incidents import (
    IncidentOpenedV1,
    IncidentResolvedV1,
    IssueSnapshot,
    SentryRef,
)
from blametrail_common.kafka import EventProducer, create_consumer, create_producer
from blametrail_common.kafka.admin import admin_client, ensure_topics
from blametrail_common.kafka.pgsink import run_into_postgres
from blametrail_common.settings import KafkaSettings
from blametrail_common.testing import signed_fixture
from blametrail_common.topics import topic_name
from blametrail_devstack.logtools import end_offsets, project_until, table_checksums
from blametrail_devstack.pytest_plugin import Infra, create_database
from blametrail_mappings_api.app import create_app
from blametrail_mappings_api.repository import Repository, create_pool
from blametrail_mappings_api.settings import ApiSettings
from blametrail_normalizer.memory import MemoryLookup
from blametrail_normalizer.normalize import normalize
from blametrail_projector.projection import PROJECTED_TOPICS, Projection
from blametrail_replay.offsets import describe_group
from blametrail_replay.rebuild import CHECKSUM_KEYS, rebuild_projection
from blametrail_replay.reprocess import ignored_raw_ids, reprocess

NOW = datetime(2026, 3, 14, 10, 0, tzinfo=UTC)
CONN, TENANT = "conn-r", "tenant-r"


def _own_prefix(kafka: KafkaSettings) -> KafkaSettings:
    """A topic prefix of the test's own: these tests read whole topics."""
    return KafkaSettings(
        bootstrap_servers=kafka.bootstrap_servers, topic_prefix=f"r{uuid.uuid4().hex[:6]}."
    )


async def _committed(kafka: KafkaSettings, group: str) -> dict[int, int]:
    admin = admin_client(kafka)
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: om.offset for tp, om in found.items()}


async def _cli(*argv: str) -> int:
    args = build_parser().parse_args(["replay", *argv])
    return int(await args.handler(args))


# -- reset --------------------------------------------------------------------------------------


async def test_reset_refuses_with_live_members_dry_run_changes_nothing_then_resets(
    kafka_settings: KafkaSettings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kafka = _own_prefix(kafka_settings)
    await ensure_topics(kafka)
    monkeypatch.setenv("BLAMETRAIL_TOPIC_PREFIX", kafka.topic_prefix)
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    await producer.send_many_raw("incident-events", [(b"k%d" % i, b"v") for i in range(30)])
    await producer.stop()
    group = f"g-{uuid.uuid4().hex[:6]}"
    member = create_consumer(kafka, ["incident-events"], group)
    await member.start()
    seen = 0
    while seen < 30:
        seen += sum(len(b) for b in (await member.getmany(timeout_ms=1000)).values())
    await member.commit()
    before = await _committed(kafka, group)
    assert sum(before.values()) == 30
    assert (await describe_group(kafka, group)).live

    assert (
        await _cli("reset", "--group", group, "--topic", "incidents", "--to-earliest", "--yes") == 1
    )
    assert await _committed(kafka, group) == before
    assert (
        await _cli("reset", "--group", group, "--topic", "incidents", "--to-earliest", "--dry-run")
        == 0
    )
    assert await _committed(kafka, group) == before

    await member.stop()  # leaves the group
    assert not (await describe_group(kafka, group)).live
    assert (
        await _cli("reset", "--group", group, "--topic", "incidents", "--to-earliest", "--yes") == 0
    )
    assert set((await _committed(kafka, group)).values()) == {0}
    p0 = before[0]
    assert (
        await _cli(
            "reset", "--group", group, "--topic", "incidents", "--to-offset", f"0:{p0}", "--yes"
        )
        == 0
    )
    after = await _committed(kafka, group)
    assert after[0] == p0
    assert sum(after.values()) == p0

    # A group that keeps its offsets in Postgres (the projection) has them written there too.
    name = topic_name("incident-events", kafka.topic_prefix)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset, updated_at)"
            " VALUES (%s, %s, 0, 17, now())",
            (group, name),
        )
        assert (
            await _cli("reset", "--group", group, "--topic", "incidents", "--to-latest", "--yes")
            == 0
        )
        rows = await (
            await conn.execute(
                "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = %s", (group,)
            )
        ).fetchall()
    latest = await _committed(kafka, group)
    assert dict(rows) == latest
    assert sum(latest.values()) == 30


# -- projection rebuild -------------------------------------------------------------------------


def _incident(i: int, resolved: bool = False, tenant: str = "t") -> Any:
    incident_id = str(uuid.uuid5(uuid.NAMESPACE_OID, f"replay-{i}"))
    kind = IncidentResolvedV1 if resolved else IncidentOpenedV1
    at = NOW + timedelta(seconds=i + (3600 if resolved else 0))
    payload = kind(
        incident_id=incident_id,
        tenant_id=tenant,
        service_id="svc",
        source="sentry_issue",
        severity="sev2",
        status_at=at,
        sentry=SentryRef(connection_id="c", issue_id=str(i)),
        snapshot=IssueSnapshot(title=f"KeyError {i}", count=i),
    )
    return new_event(payload, key=incident_id, tenant=tenant, occurred_at=at)


async def test_rebuild_while_events_flow_swaps_in_tables_equal_to_a_rebuild_from_scratch(
    kafka_settings: KafkaSettings, infra: Infra
) -> None:
    kafka = _own_prefix(kafka_settings)
    await ensure_topics(kafka)
    live = create_database(infra.server_dsn, f"bt_rb_live_{uuid.uuid4().hex[:6]}")
    scratch = create_database(infra.server_dsn, f"bt_rb_scratch_{uuid.uuid4().hex[:6]}")
    migrate(live)
    migrate(scratch)
    # The API reads the live tables all through the rebuild, as its users would.
    pool = create_pool(live, 2)
    await pool.open()
    repo = Repository(pool, SecretBox(generate_key()))
    auth = {"Authorization": f"Bearer {await repo.create_api_key('acme')}"}
    async with pool.connection() as c:
        org = await (await c.execute("SELECT id FROM organizations WHERE slug = 'acme'")).fetchone()
    assert org is not None
    tenant = str(org["id"])
    app = create_app(ApiSettings(public_ingest_url="https://hooks.example"), repo, {})
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    await producer.send_many(
        [("incident-events", _incident(i, tenant=tenant)) for i in range(2000)]
    )
    await producer.send_raw("incident-events", b"junk", b"\xff not an event")  # dead-lettered once

    stop_live, stop_feed = asyncio.Event(), asyncio.Event()
    consumer = create_consumer(kafka, [], "live")
    await consumer.start()
    names = [topic_name(t, kafka.topic_prefix) for t in PROJECTED_TOPICS]
    live_task = asyncio.create_task(
        run_into_postgres(consumer, names, live, "live", Projection(producer).apply, stop_live)
    )
    fed = 0

    async def feed() -> None:  # new incidents and resolutions of old ones, all through the rebuild
        nonlocal fed
        while not stop_feed.is_set():
            batch = [
                ("incident-events", _incident(2000 + fed + j, tenant=tenant)) for j in range(20)
            ]
            batch += [
                ("incident-events", _incident(fed + j, resolved=True, tenant=tenant))
                for j in range(20)
            ]
            await producer.send_many(batch)
            fed += 20
            await asyncio.sleep(0.05)

    reads, errors = 0, []

    first_id = str(uuid.uuid5(uuid.NAMESPACE_OID, "replay-0"))

    async def read() -> None:  # API requests meanwhile: every one must answer 200
        nonlocal reads
        while not stop_feed.is_set():
            for path in ("/api/v1/incidents?status=open", f"/api/v1/incidents/{first_id}"):
                try:
                    resp = await api.get(path, headers=auth)
                    if resp.status_code != 200:
                        errors.append(f"{path}: {resp.status_code} {resp.text[:200]}")
                except Exception as exc:
                    errors.append(f"{path}: {exc!r}")
                reads += 1
            await asyncio.sleep(0.01)

    async with await psycopg.AsyncConnection.connect(live) as conn:
        oid = await (await conn.execute("SELECT 'incidents'::regclass::oid")).fetchone()
    for _ in range(300):  # the live projection has shown the first incident: now it must stay
        if (await api.get(f"/api/v1/incidents/{first_id}", headers=auth)).status_code == 200:
            break
        await asyncio.sleep(0.1)
    feeder, reader = asyncio.create_task(feed()), asyncio.create_task(read())
    try:
        await asyncio.sleep(1.0)
        summary = await rebuild_projection(kafka, live, "live", batch=200)
        assert summary.identical, (summary.live, summary.rebuilt)
        assert summary.applied >= 2000
        assert summary.refused == 1
        await asyncio.sleep(0.5)  # the live projector keeps writing, now into the new tables
    finally:
        stop_feed.set()
        await asyncio.gather(feeder, reader)
    end = await end_offsets(kafka, PROJECTED_TOPICS)
    async with await psycopg.AsyncConnection.connect(live, autocommit=True) as conn:
        for _ in range(300):
            rows = dict(
                await (
                    await conn.execute(
                        "SELECT topic, sum(next_offset) FROM consumer_offsets WHERE group_id = 'live'"
                        " GROUP BY topic"
                    )
                ).fetchall()
            )
            if all(rows.get(t, 0) >= n for t, n in end.items()):
                break
            await asyncio.sleep(0.2)
        leftovers = await (
            await conn.execute(
                "SELECT relname FROM pg_class WHERE relname LIKE 'rebuild\\_%' OR relname LIKE 'previous\\_%'"
            )
        ).fetchall()
        swapped = await (await conn.execute("SELECT 'incidents'::regclass::oid")).fetchone()
        indexes = await (
            await conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'incidents' ORDER BY 1"
            )
        ).fetchall()
    stop_live.set()
    await live_task
    await consumer.stop()
    assert swapped != oid  # the incidents table now is the rebuilt one
    assert errors == []
    assert reads > 10
    assert fed > 0
    assert leftovers == []
    async with await psycopg.AsyncConnection.connect(scratch) as fresh:
        migrated = await (
            await fresh.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'incidents' ORDER BY 1"
            )
        ).fetchall()
    # the swapped-in table carries exactly the indexes the migrations give the live one
    assert [r[0] for r in indexes] == [r[0] for r in migrated]
    assert "incidents_pkey" in [r[0] for r in indexes]

    await project_until(kafka, scratch, "scratch", PROJECTED_TOPICS, Projection(None).apply, end)
    await producer.stop()
    await api.aclose()
    await pool.close()
    assert await table_checksums(live, CHECKSUM_KEYS) == await table_checksums(
        scratch, CHECKSUM_KEYS
    )


# -- reprocess-ignored --------------------------------------------------------------------------


def _webhook(fixture: str, slug: str, issue_id: str, minute: int) -> Any:
    body = signed_fixture(fixture)[0]
    body = body.replace(b'"slug":"checkout-api"', b'"slug":"%s"' % slug.encode())
    body = body.replace(b"5912345678", issue_id.encode())
    payload = WebhookReceivedV1(
        connection_id=CONN,
        resource="issue",
        action=fixture.split(".")[1],
        installation_uuid=None,
        signature_header="Sentry-Hook-Signature",
        request_id=uuid.uuid4().hex,
        hook_timestamp="1773480414",
        received_at=NOW + timedelta(minutes=minute),
        body_sha256=body_sha256(body),
        body=body.decode(),
    )
    return new_event(payload, key=issue_id)


def _states(with_mapping: bool) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [
        (
            "cp-connections",
            new_event(
                ConnectionStateV1(
                    connection_id=CONN,
                    tenant_id=TENANT,
                    mode="internal",
                    enabled=True,
                    sentry_org_slug="acme",
                    api_base_url="https://sentry.io",
                    client_secrets_enc=[],
                    updated_at=NOW,
                ),
                key=CONN,
            ),
        ),
        (
            "cp-services",
            new_event(
                ServiceStateV1(
                    service_id="svc-pay", tenant_id=TENANT, slug="pay", name="Pay", updated_at=NOW
                ),
                key="svc-pay",
            ),
        ),
    ]
    if with_mapping:
        mapping = MappingStateV1(
            mapping_id="m-pay",
            tenant_id=TENANT,
            connection_id=CONN,
            sentry_project_slug="payments-api",
            service_id="svc-pay",
            active=True,
            updated_at=NOW,
        )
        out.append(("cp-mappings", new_event(mapping, key=mapping_key(CONN, "payments-api"))))
    return out


async def _topic(kafka: KafkaSettings, topic: str) -> list[Any]:
    end = (await end_offsets(kafka, [topic]))[topic_name(topic, kafka.topic_prefix)]
    reader: AIOKafkaConsumer = create_consumer(kafka, [topic], group_id=None)
    await reader.start()
    out: list[Any] = []
    try:
        while len(out) < end:
            for batch in (await reader.getmany(timeout_ms=1000)).values():
                out.extend(decode(r.value) for r in batch)
    finally:
        await reader.stop()
    return out


async def test_reprocess_ignored_creates_what_a_mapping_from_the_start_would_have_and_twice_is_a_no_op(
    kafka_settings: KafkaSettings, infra: Infra
) -> None:
    kafka = _own_prefix(kafka_settings)
    await ensure_topics(kafka)
    dsn = create_database(infra.server_dsn, f"bt_rp_{uuid.uuid4().hex[:6]}")
    migrate(dsn)
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    await producer.send_many(_states(with_mapping=False))
    hooks = [
        _webhook("issue.created", "payments-api", "2001", 0),
        _webhook("issue.created", "frontend", "3001", 1),  # another unmapped project: untouched
        _webhook("issue.resolved", "payments-api", "2001", 2),
        _webhook("issue.created", "payments-api", "2002", 3),
        _webhook("issue.unresolved", "payments-api", "2001", 4),
    ]
    await producer.send_many([("sentry-webhooks-raw", h) for h in hooks])

    first = await reprocess(kafka, None)  # the normalizer's pass: every webhook is unmapped
    assert (first.selected, first.written) == (5, 5)
    assert {a.payload.reason for a in await _topic(kafka, "webhook-audit")} == {"unmapped"}
    assert await _topic(kafka, "incident-events") == []

    await producer.send_many(_states(with_mapping=True)[2:])  # the operator maps it, too late
    ids = await ignored_raw_ids(kafka, "payments-api", None, None)
    assert ids == {str(h.id) for i, h in enumerate(hooks) if i != 1}
    summary = await reprocess(kafka, None, only=ids)
    assert (summary.selected, summary.still_ignored) == (4, 0)

    expected_lookup = MemoryLookup()
    for _, state in _states(with_mapping=True):
        p = state.payload
        if isinstance(p, ConnectionStateV1):
            expected_lookup.connections[p.connection_id] = p
        elif isinstance(p, ServiceStateV1):
            expected_lookup.services[p.service_id] = p
        else:
            expected_lookup.mappings[mapping_key(CONN, p.sentry_project_slug)] = p
    expected = []
    for hook in hooks:  # with the mapping present from the start, in the order received
        out = normalize(hook, expected_lookup)
        expected_lookup.incidents.update(out.opened)
        expected += [
            (str(e.id), e.type, e.payload) for t, e in out.events if t == "incident-events"
        ]
    got = [(str(e.id), e.type, e.payload) for e in await _topic(kafka, "incident-events")]
    assert sorted(got, key=str) == sorted(expected, key=str)
    assert len(expected) == 4

    topics = ("incident-events", "webhook-audit")
    end = await end_offsets(kafka, topics)
    await project_until(kafka, dsn, "p1", topics, Projection(producer).apply, end)
    once = await table_checksums(dsn, CHECKSUM_KEYS)
    again = await reprocess(
        kafka, None, only=await ignored_raw_ids(kafka, "payments-api", None, None)
    )
    assert again.selected == 4
    end = await end_offsets(kafka, topics)
    await project_until(kafka, dsn, "p1", topics, Projection(producer).apply, end)
    assert await table_checksums(dsn, CHECKSUM_KEYS) == once
    await producer.stop()
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        rows = await (await conn.execute("SELECT status FROM incidents ORDER BY title")).fetchall()
    assert len(rows) == 2
    assert {r[0] for r in rows} == {"open"}
