"""kill -9 the enricher and the projector at random points while 2,000 incidents flow: the final
tables hold exactly the expected rows, no loss and no duplicate (at-least-once + idempotent)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_common.db import migrate
from blametrail_common.events import ConnectionStateV1, encode, new_event
from blametrail_common.events.incidents import IncidentOpenedV1, IssueSnapshot, SentryRef
from blametrail_common.kafka import EventProducer, create_producer
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.settings import KafkaSettings
from blametrail_devstack.pytest_plugin import Infra, create_database
from blametrail_devstack.stack import free_port
from blametrail_devstack.testkit import spawn
from blametrail_sentry_stub import StubState, serve

N = 2000
T0 = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)


async def _counts(dsn: str) -> tuple[int, int, int]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (
            await conn.execute(
                "SELECT (SELECT count(*) FROM incidents), (SELECT count(*) FROM incident_timeline),"
                " (SELECT count(*) FROM incident_enrichments WHERE status = 'enriched')"
            )
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


async def test_kill_minus_nine_while_2000_incidents_flow(
    kafka_settings: KafkaSettings, infra: Infra, tmp_path: Path
) -> None:
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers, topic_prefix=f"k{uuid.uuid4().hex[:6]}."
    )
    await ensure_topics(kafka)
    dsn = create_database(infra.server_dsn, f"bt_crash_{uuid.uuid4().hex[:6]}")
    migrate(dsn)
    key = generate_key()
    stub = StubState(rate_limit=400)
    rng = random.Random(20261124)
    async with serve(stub) as stub_url:
        token = stub.add_internal_token("acme")
        producer = EventProducer(create_producer(kafka), kafka)
        await producer.start()
        await producer.send(
            "cp-connections",
            new_event(
                ConnectionStateV1(
                    connection_id="c1",
                    tenant_id="t1",
                    mode="internal",
                    enabled=True,
                    sentry_org_slug="acme",
                    api_base_url=stub_url,
                    client_secrets_enc=[],
                    auth_token_enc=SecretBox(key).encrypt(token),
                    updated_at=T0,
                ),
                key="c1",
            ),
        )
        expected = {}
        records = []
        for i in range(N):
            incident_id = str(uuid.uuid5(uuid.NAMESPACE_OID, f"crash-{i}"))
            expected[incident_id] = f"incident {i}"
            payload = IncidentOpenedV1(
                incident_id=incident_id,
                tenant_id="t1",
                service_id="svc",
                source="sentry_issue",
                severity="sev2",
                status_at=T0 + timedelta(seconds=i),
                sentry=SentryRef(connection_id="c1", issue_id=str(10_000 + i)),
                snapshot=IssueSnapshot(title=f"incident {i}"),
            )
            records.append(
                (incident_id.encode(), encode(new_event(payload, key=incident_id, tenant="t1")))
            )
        await producer.send_many_raw("incident-events", records)
        await producer.stop()

        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "BLAMETRAIL_TOPIC_PREFIX": kafka.topic_prefix,
            "DATABASE_URL": dsn,
            "BLAMETRAIL_SECRET_KEYS": key,
            "BLAMETRAIL_LOG_LEVEL": "WARNING",
            "BLAMETRAIL_ENRICHER_PORT": str(free_port()),
            "BLAMETRAIL_PROJECTION_PORT": str(free_port()),
            "BLAMETRAIL_SHUTDOWN_GRACE_S": "10",
        }
        modules = {"enricher": "blametrail_enricher", "projector": "blametrail_projector"}

        logs = {name: tmp_path / f"{name}.log" for name in modules}

        def start(name: str) -> subprocess.Popen[bytes]:
            return spawn(modules[name], env, logs[name])

        procs = {name: start(name) for name in modules}
        kills = 0
        try:
            while kills < 8:  # kill -9 at random points, restart, again
                await asyncio.sleep(rng.uniform(0.5, 2.5))
                name = rng.choice(list(modules))
                procs[name].send_signal(signal.SIGKILL)
                procs[name].wait()
                kills += 1
                procs[name] = start(name)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 180
            while await _counts(dsn) != (N, N, N) and loop.time() < deadline:  # noqa: ASYNC110 (polls Postgres)
                await asyncio.sleep(0.5)
        finally:
            for proc in procs.values():
                proc.send_signal(signal.SIGTERM)
            hung = []
            for name, proc in procs.items():
                try:  # bounded: 10 s grace, then cancel, then a hard exit
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    hung.append(f"{name}:\n" + logs[name].read_text()[-4000:])
            assert not hung, "SIGTERM did not stop:\n" + "\n".join(hung)
            codes = {name: proc.returncode for name, proc in procs.items()}
            assert codes == {name: 0 for name in modules}, (
                codes,
                {n: logs[n].read_text()[-2000:] for n in modules},
            )

    assert await _counts(dsn) == (N, N, N)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        rows = dict(
            await (await conn.execute("SELECT incident_id::text, title FROM incidents")).fetchall()
        )
        enriched = await (
            await conn.execute(
                "SELECT count(*) FROM incident_enrichments e JOIN incidents i USING (incident_id)"
                " WHERE e.record->>'sentry_issue_id' = (i.sentry->>'issue_id')"
            )
        ).fetchone()
    assert rows == expected
    assert enriched == (N,)
    assert kills == 8
