"""The write-back worker (``python -m blametrail_sync``) through a Postgres crash: a dedicated
Postgres (never the shared one) is stopped with ``-m immediate`` while an action waits to be
written back. The worker stays up, names Postgres in ``/readyz``, writes nothing while its state
cannot be read, and once Postgres is back writes the action back exactly once."""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_common.db import migrate
from blametrail_common.events import ConnectionStateV1, new_event
from blametrail_common.events.incidents import Actor, IncidentActionV1, IssueSnapshot, SentryRef
from blametrail_common.kafka import EventProducer, create_producer
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.settings import KafkaSettings
from blametrail_devstack.postgres import PgCluster
from blametrail_devstack.stack import free_port
from blametrail_devstack.testkit import readyz, spawn, stop_gracefully, until
from blametrail_sentry_stub import StubState, serve

ORG, PROJECT, CONNECTION, TENANT = "acme", "checkout-api", "c-heal", "t-heal"


def _resolve(incident_id: str, issue_id: str) -> IncidentActionV1:
    return IncidentActionV1(
        incident_id=incident_id,
        tenant_id=TENANT,
        service_id="s1",
        source="sentry_issue",
        severity="sev2",
        status_at=datetime.now(UTC),
        sentry=SentryRef(connection_id=CONNECTION, issue_id=issue_id),
        snapshot=IssueSnapshot(title="x"),
        action_id=str(uuid.uuid4()),
        action="resolve",
        actor=Actor(kind="user", id="u1", name="Mia"),
        status="resolved",
    )


@pytest.mark.timeout(120)
async def test_the_worker_writes_back_once_across_a_postgres_restart(
    kafka_settings: KafkaSettings, tmp_path: Path, dedicated_pg: PgCluster
) -> None:
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers, topic_prefix=f"y{uuid.uuid4().hex[:6]}."
    )
    await ensure_topics(kafka)
    key = generate_key()
    stub = StubState()
    token = stub.add_internal_token(ORG)
    for issue_id in ("8001", "8002"):
        stub.issue_store.create(ORG, PROJECT, issue_id=issue_id)
    port = free_port()
    log_path = tmp_path / "sync.log"
    producer = EventProducer(create_producer(kafka), kafka)
    proc = None

    def puts(issue_id: str) -> list[object]:
        return [u["body"] for u in stub.apps.updates if u["issue_id"] == issue_id]

    try:
        dedicated_pg.start()
        dsn = dedicated_pg.dsn()
        migrate(dsn)
        await producer.start()
        async with serve(stub) as stub_url:
            state = ConnectionStateV1(
                connection_id=CONNECTION,
                tenant_id=TENANT,
                mode="internal",
                enabled=True,
                sentry_org_slug=ORG,
                api_base_url=stub_url,
                client_secrets_enc=[],
                auth_token_enc=SecretBox(key).encrypt(token),
                updated_at=datetime.now(UTC),
            )
            await producer.send("cp-connections", new_event(state, key=CONNECTION))
            env = {
                "PATH": "/usr/bin:/bin",
                "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                "BLAMETRAIL_TOPIC_PREFIX": kafka.topic_prefix,
                "DATABASE_URL": dsn,
                "BLAMETRAIL_SECRET_KEYS": key,
                "BLAMETRAIL_SYNC_PORT": str(port),
                "BLAMETRAIL_SYNC_GROUP": "syncheal",
                "BLAMETRAIL_SHUTDOWN_GRACE_S": "5",
            }
            proc = spawn("blametrail_sync", env, log_path)
            first, second = str(uuid.uuid4()), str(uuid.uuid4())
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

                async def ready() -> bool:
                    return (await readyz(client))[0] == 200

                await until("the worker to be ready", ready, 30)
                event = _resolve(first, "8001")
                await producer.send("incident-events", new_event(event, key=first, tenant=TENANT))

                async def written(issue_id: str) -> bool:
                    issue = stub.issue_store.get(ORG, issue_id)
                    return issue is not None and issue["status"] == "resolved"

                await until("the first write-back", lambda: written("8001"), 30)
                dedicated_pg.stop("immediate")
                event = _resolve(second, "8002")
                await producer.send("incident-events", new_event(event, key=second, tenant=TENANT))

                async def postgres_named() -> bool:
                    status, checks = await readyz(client)
                    return status == 503 and checks.get("postgres") is False

                await until("/readyz to name postgres", postgres_named, 20)
                assert proc.poll() is None, "the worker exited while Postgres was away"
                assert puts("8002") == []  # its state could not be read: nothing written
                dedicated_pg.start()
                await until("the second write-back", lambda: written("8002"), 45)

                async def stored() -> bool:
                    try:
                        async with await psycopg.AsyncConnection.connect(dsn) as c:
                            cur = await c.execute(
                                "SELECT count(*) FROM sync_incidents WHERE written_status IS NOT NULL"
                            )
                            return bool((await cur.fetchone() or (0,))[0] == 2)
                    except psycopg.OperationalError:
                        return False

                await until("both winners stored as written", stored, 30)
                await until("/readyz 200 again", ready, 20)
            assert proc.poll() is None, "the worker exited"
            assert puts("8001") == puts("8002") == [{"status": "resolved"}]  # once each
        assert "loop failed; restarting after backoff" in log_path.read_text()
    except BaseException:
        if log_path.exists():
            sys.stderr.write(log_path.read_text()[-5000:])
        raise
    finally:
        await producer.stop()
        if proc is not None:
            stop_gracefully(proc, 15)
