"""Reprocess jobs end to end on the real broker and Postgres (issue 17 page 4): the API records
the job, the replay package's worker runs it with the code of ``replay reprocess-ignored``, and
the project's ignored webhooks become incidents; a worker killed mid-job is taken over without
a person; a re-run (what a takeover does) changes no row."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
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
from blametrail_common.kafka import EventProducer, create_consumer, create_producer
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.settings import KafkaSettings
from blametrail_common.testing import signed_fixture
from blametrail_common.topics import topic_name
from blametrail_devstack.logtools import end_offsets, project_until, table_checksums
from blametrail_devstack.pytest_plugin import Infra, create_database
from blametrail_devstack.stack import free_port
from blametrail_devstack.testkit import readyz, spawn, until
from blametrail_mappings_api.app import create_app
from blametrail_mappings_api.repository import Repository, create_pool
from blametrail_mappings_api.settings import ApiSettings
from blametrail_projector.projection import Projection
from blametrail_replay.jobs import JobStore, Lost
from blametrail_replay.rebuild import CHECKSUM_KEYS
from blametrail_replay.reprocess import reprocess
from blametrail_replay.worker import Worker
from blametrail_replay.worker_settings import JobWorkerSettings

NOW = datetime(2026, 3, 14, 10, 0, tzinfo=UTC)
SLUG = "payments-api"
FAST = {"poll_s": 0.5, "heartbeat_s": 0.2, "stale_after_s": 2.0, "mapping_wait_s": 30.0}


@dataclass
class Env:
    kafka: KafkaSettings
    dsn: str
    api: httpx.AsyncClient
    admin: dict[str, str]
    org: str
    conn_id: str
    producer: EventProducer
    hooks: list[Any]


def _webhook(conn_id: str, fixture: str, slug: str, issue_id: str, minute: int) -> Any:
    body = signed_fixture(fixture)[0]
    body = body.replace(b'"slug":"checkout-api"', b'"slug":"%s"' % slug.encode())
    body = body.replace(b"5912345678", issue_id.encode())
    payload = WebhookReceivedV1(
        connection_id=conn_id,
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


def _mapping(env: Env) -> tuple[str, Any]:
    m = MappingStateV1(
        mapping_id="m-pay",
        tenant_id=env.org,
        connection_id=env.conn_id,
        sentry_project_slug=SLUG,
        service_id="svc-pay",
        active=True,
        updated_at=NOW,
    )
    return "cp-mappings", new_event(m, key=mapping_key(env.conn_id, SLUG))


@pytest.fixture
async def env(kafka_settings: KafkaSettings, infra: Infra) -> AsyncIterator[Env]:
    """Its own topic prefix (the worker reads whole topics) and database; an organization with
    a connection in the control plane, the same connection and a service in the pipeline's
    tables, and five webhooks (four of payments-api) the normalizer ignored as unmapped."""
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers,
        topic_prefix=f"j{uuid.uuid4().hex[:6]}.",
    )
    await ensure_topics(kafka)
    dsn = create_database(infra.server_dsn, f"bt_jobs_{uuid.uuid4().hex[:6]}")
    migrate(dsn)
    pool = create_pool(dsn, 4)
    await pool.open()
    repo = Repository(pool, SecretBox(generate_key()))
    key = await repo.create_api_key("acme-org")
    async with pool.connection() as c:
        row = await (await c.execute("SELECT id FROM organizations")).fetchone()
    assert row is not None
    org = str(row["id"])
    made = await repo.connections.create(
        org,
        {
            "mode": "internal",
            "sentry_org_slug": "acme",
            "api_base_url": "https://sentry.io",
            "client_secret": "s" * 64,
            "auth_token": "t" * 64,
        },
    )
    conn_id = str(made["id"])
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    state = ConnectionStateV1(
        connection_id=conn_id,
        tenant_id=org,
        mode="internal",
        enabled=True,
        sentry_org_slug="acme",
        api_base_url="https://sentry.io",
        client_secrets_enc=[],
        updated_at=NOW,
    )
    svc = ServiceStateV1(
        service_id="svc-pay", tenant_id=org, slug="pay", name="Pay", updated_at=NOW
    )
    await producer.send_many(
        [
            ("cp-connections", new_event(state, key=conn_id)),
            ("cp-services", new_event(svc, key="svc-pay")),
        ]
    )
    hooks = [
        _webhook(conn_id, "issue.created", SLUG, "2001", 0),
        _webhook(conn_id, "issue.created", "frontend", "3001", 1),  # another project: untouched
        _webhook(conn_id, "issue.resolved", SLUG, "2001", 2),
        _webhook(conn_id, "issue.created", SLUG, "2002", 3),
        _webhook(conn_id, "issue.unresolved", SLUG, "2001", 4),
    ]
    await producer.send_many([("sentry-webhooks-raw", h) for h in hooks])
    first = await reprocess(kafka, None)  # the normalizer's pass: every webhook is unmapped
    assert (first.selected, first.written) == (5, 5)
    app = create_app(ApiSettings(public_ingest_url="https://hooks.example"), repo, {})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as api:
        yield Env(
            kafka, dsn, api, {"Authorization": f"Bearer {key}"}, org, conn_id, producer, hooks
        )
    await producer.stop()
    await pool.close()


@contextlib.asynccontextmanager
async def _worker(env: Env, **settings: Any) -> AsyncIterator[None]:
    worker = Worker(JobWorkerSettings(**{**FAST, **settings}), env.kafka, env.dsn)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def _post(env: Env) -> httpx.Response:
    return await env.api.post(
        "/api/v1/audit/reprocess",
        headers=env.admin,
        json={"connection_id": env.conn_id, "project_slug": SLUG},
    )


async def _job(env: Env, job_id: str) -> dict[str, Any]:
    got = await env.api.get(f"/api/v1/jobs/{job_id}", headers=env.admin)
    assert got.status_code == 200, got.text
    body: dict[str, Any] = got.json()
    return body


async def _ended(env: Env, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    async def ended() -> bool:
        return (await _job(env, job_id))["state"] in ("done", "failed")

    await until(f"job {job_id} to end", ended, timeout_s)
    return await _job(env, job_id)


async def _incident_ids(env: Env) -> list[str]:
    topic = "incident-events"
    end = (await end_offsets(env.kafka, [topic]))[topic_name(topic, env.kafka.topic_prefix)]
    reader = create_consumer(env.kafka, [topic], group_id=None)
    await reader.start()
    out: list[str] = []
    try:
        while len(out) < end:
            for batch in (await reader.getmany(timeout_ms=1000)).values():
                out.extend(str(decode(r.value).id) for r in batch)
    finally:
        await reader.stop()
    return out


async def _project(env: Env) -> list[tuple[str, str]]:
    topics = ("incident-events", "webhook-audit")
    end = await end_offsets(env.kafka, topics)
    await project_until(env.kafka, env.dsn, "p1", topics, Projection(env.producer).apply, end)
    async with await psycopg.AsyncConnection.connect(env.dsn) as conn:
        rows = await (
            await conn.execute("SELECT status, tenant_id::text FROM incidents ORDER BY title")
        ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


async def test_a_job_runs_to_done_with_the_counts_and_the_ignored_webhooks_become_incidents(
    env: Env,
) -> None:
    await env.producer.send_many([_mapping(env)])  # mapped, too late for these webhooks
    assert await _incident_ids(env) == []
    async with _worker(env):
        posted = await _post(env)
        assert posted.status_code == 202, posted.text
        done = await _ended(env, posted.json()["job_id"])
    assert done["state"] == "done", done
    assert (done["total"], done["processed"], done["republished"], done["still_ignored"]) == (
        5,
        5,
        4,
        0,
    )
    assert (done["error"], done["attempt"]) == (None, 1)
    assert done["finished_at"] is not None
    first_ids = await _incident_ids(env)
    assert len(first_ids) == 4
    incidents = await _project(env)
    assert incidents == [("open", env.org), ("open", env.org)]  # 2001 reopened, 2002 open
    once = await table_checksums(env.dsn, CHECKSUM_KEYS)

    # a second run from the start (what a takeover does) publishes the same ids: no new row
    async with _worker(env):
        again = await _ended(env, (await _post(env)).json()["job_id"])
    assert (again["state"], again["republished"]) == ("done", 4)
    ids = await _incident_ids(env)
    assert len(ids) == 8
    assert set(ids) == set(first_ids)
    await _project(env)
    assert await table_checksums(env.dsn, CHECKSUM_KEYS) == once


async def test_a_job_for_a_project_still_unmapped_fails_saying_so(env: Env) -> None:
    async with _worker(env, mapping_wait_s=0.5):
        done = await _ended(env, (await _post(env)).json()["job_id"])
    assert done["state"] == "failed"
    assert f"project {SLUG} has no mapping" in done["error"]
    assert "map it" in done["error"]
    assert await _incident_ids(env) == []


async def test_a_worker_killed_mid_job_is_taken_over_and_the_job_completes_without_a_person(
    env: Env, tmp_path: Path
) -> None:
    port = free_port()
    child_env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": env.kafka.bootstrap_servers,
        "BLAMETRAIL_TOPIC_PREFIX": env.kafka.topic_prefix,
        "DATABASE_URL": env.dsn,
        "BLAMETRAIL_JOBS_PORT": str(port),
        "BLAMETRAIL_JOBS_HEARTBEAT_S": "0.2",
        # the mapping is not published yet: the job waits for it, running, until the kill
        "BLAMETRAIL_JOBS_MAPPING_WAIT_S": "600",
    }
    child = spawn("blametrail_replay.worker", child_env, tmp_path / "worker.log")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as health:

            async def ready() -> bool:
                return (await readyz(health))[0] == 200

            await until("the worker's /readyz", ready, 60)
            metrics = (await health.get("/metrics")).text
            assert "blametrail_jobs_running" in metrics
        job_id = (await _post(env)).json()["job_id"]

        async def running() -> bool:
            j = await _job(env, job_id)
            return j["state"] == "running" and j["attempt"] == 1

        await until("the worker to claim the job", running, 60)
        # a second job for the same project while this one runs: 409 naming it
        second = await _post(env)
        assert second.status_code == 409, second.text
        assert second.json()["existing"] == {
            "job_id": job_id,
            "state": "running",
            "created_at": second.json()["existing"]["created_at"],
        }
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
    assert (await _job(env, job_id))["state"] == "running"  # its worker is gone mid-job

    await env.producer.send_many([_mapping(env)])
    async with _worker(env):  # another worker, never told: the heartbeat goes stale
        done = await _ended(env, job_id)
    assert done["state"] == "done", done
    assert (done["attempt"], done["republished"], done["total"]) == (2, 4, 5)
    assert len(await _incident_ids(env)) == 4
    assert len(await _project(env)) == 2


async def test_a_worker_that_lost_its_job_writes_nothing_and_a_job_that_kills_every_worker_fails(
    env: Env,
) -> None:
    job_id = (await _post(env)).json()["job_id"]
    async with (
        await psycopg.AsyncConnection.connect(env.dsn, autocommit=True) as a,
        await psycopg.AsyncConnection.connect(env.dsn, autocommit=True) as b,
    ):
        first, second = JobStore(a, "w1", 1.0, 2), JobStore(b, "w2", 1.0, 2)
        claimed = await first.claim()
        assert claimed is not None
        mine, taken_over = claimed
        assert (str(mine.job_id), mine.attempt, taken_over) == (job_id, 1, False)
        assert await second.claim() is None  # running with a fresh heartbeat: not claimable
        await a.execute("UPDATE jobs SET heartbeat_at = now() - interval '1 minute'")
        took = await second.claim()
        assert took is not None
        theirs, taken_over = took
        assert (theirs.attempt, taken_over) == (2, True)
        with pytest.raises(Lost):
            await first.beat(mine, 3, 5)
        with pytest.raises(Lost):
            await first.finish(mine, 5, 4, 0)
        assert (await _job(env, job_id))["state"] == "running"

        await a.execute("UPDATE jobs SET heartbeat_at = now() - interval '1 minute'")
        given_up = await first.give_up_stale()  # 2 attempts of 2: not a third
        assert [str(r["job_id"]) for r in given_up] == [job_id]
        assert await first.claim() is None
    failed = await _job(env, job_id)
    assert failed["state"] == "failed"
    assert "on each of 2 attempts" in failed["error"]
