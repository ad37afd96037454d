"""The projector process outlives a Postgres restart (issue 15, defect 1).

A dedicated Postgres (never the shared one) is stopped with ``-m immediate`` while incident
events flow; the projector must answer 503 naming ``postgres`` meanwhile, reconnect by itself and
resume from the offsets stored in Postgres: every incident once, the offsets exactly at the end.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from blametrail_common.db import migrate
from blametrail_common.events import new_event
from blametrail_common.events.envelope import Envelope
from blametrail_common.events.incidents import IncidentOpenedV1, IssueSnapshot, SentryRef
from blametrail_common.kafka import EventProducer, create_producer
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.settings import KafkaSettings
from blametrail_devstack.postgres import PgCluster
from blametrail_devstack.stack import free_port
from blametrail_devstack.testkit import readyz, spawn, until

T0 = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)
N = 300


def _opened(incident_id: str, i: int) -> Envelope[IncidentOpenedV1]:
    payload = IncidentOpenedV1(
        incident_id=incident_id,
        tenant_id="t",
        service_id="svc",
        source="sentry_issue",
        severity="sev2",
        status_at=T0 + timedelta(seconds=i),
        sentry=SentryRef(connection_id="c", issue_id=str(10_000 + i)),
        snapshot=IssueSnapshot(title=f"incident {i}", count=1),
    )
    return new_event(payload, key=incident_id, tenant="t", occurred_at=payload.status_at)


async def _counts(dsn: str) -> tuple[int, int]:
    """(incident rows, sum of the stored next offsets); (-1, -1) while Postgres is away."""
    try:
        async with await psycopg.AsyncConnection.connect(dsn, connect_timeout=2) as conn:
            cur = await conn.execute("SELECT count(*) FROM incidents")
            rows = (await cur.fetchone() or (0,))[0]
            cur = await conn.execute(
                "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets"
                " WHERE group_id = 'heal' AND topic LIKE '%incident-events'"
            )
            offsets = (await cur.fetchone() or (0,))[0]
            return int(rows), int(offsets)
    except psycopg.OperationalError:
        return -1, -1


@pytest.mark.timeout(90)
async def test_projector_survives_a_postgres_restart(
    kafka_settings: KafkaSettings, tmp_path: Path, dedicated_pg: PgCluster
) -> None:
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers, topic_prefix=f"h{uuid.uuid4().hex[:6]}."
    )
    await ensure_topics(kafka)
    port = free_port()
    log_path = tmp_path / "projector.log"
    proc: subprocess.Popen[bytes] | None = None
    producer = EventProducer(create_producer(kafka), kafka)
    try:
        dedicated_pg.start()
        dsn = dedicated_pg.dsn()
        migrate(dsn)
        env = {
            "PATH": "/usr/bin:/bin",
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "BLAMETRAIL_TOPIC_PREFIX": kafka.topic_prefix,
            "DATABASE_URL": dsn,
            "BLAMETRAIL_PROJECTION_PORT": str(port),
            "BLAMETRAIL_PROJECTION_GROUP": "heal",
            "BLAMETRAIL_SHUTDOWN_GRACE_S": "5",
        }
        proc = spawn("blametrail_projector", env, log_path)
        await producer.start()
        ids = [str(uuid.uuid4()) for _ in range(N)]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def ready() -> bool:
                return (await readyz(client))[0] == 200

            await until("the projector to be ready", ready, 30)

            async def publish(start: int, end: int) -> None:
                await producer.send_many(
                    [("incident-events", _opened(ids[i], i)) for i in range(start, end)]
                )

            await publish(0, N // 3)

            async def some_rows() -> bool:
                return (await _counts(dsn))[0] > 0

            await until("the first rows", some_rows, 20)
            dedicated_pg.stop("immediate")
            await publish(N // 3, 2 * N // 3)  # while Postgres is away

            async def postgres_named() -> bool:
                status, checks = await readyz(client)
                return status == 503 and checks.get("postgres") is False

            await until("/readyz to name postgres", postgres_named, 15)
            await asyncio.sleep(2)
            assert proc.poll() is None, "the projector exited while Postgres was away"
            dedicated_pg.start()
            await publish(2 * N // 3, N)

            async def converged() -> bool:
                return await _counts(dsn) == (N, N)

            await until("every incident and the offsets at the end", converged, 45)
            await until("/readyz 200 again", ready, 20)
        assert proc.poll() is None, "the projector exited"
        log_text = log_path.read_text()
        assert "loop failed; restarting after backoff" in log_text
    except BaseException:
        if log_path.exists():
            sys.stderr.write(log_path.read_text()[-5000:])
        raise
    finally:
        await producer.stop()
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
