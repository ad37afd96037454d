"""The write-back worker (``python -m blametrail_sync``) through a Postgres crash and a broker
crash, each a server of the test's own (never the shared one).

- Postgres stopped with ``-m immediate`` while an action waits to be written back: the worker
  stays up, names Postgres in ``/readyz``, writes nothing while its state cannot be read, and
  once Postgres is back writes the action back exactly once.
- The broker killed (``kill -9``) after a write-back: the worker stays up, names Kafka in
  ``/readyz``, and once the broker is back writes the next action back exactly once, and the
  one before not again."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
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
from blametrail_devstack.kafka import KafkaNode
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


@dataclass
class Worker:
    stub: StubState
    producer: EventProducer
    client: httpx.AsyncClient
    proc: subprocess.Popen[bytes]
    log: Path

    def puts(self, issue_id: str) -> list[object]:
        return [u["body"] for u in self.stub.apps.updates if u["issue_id"] == issue_id]

    async def resolve(self, incident_id: str, issue_id: str) -> None:
        event = _resolve(incident_id, issue_id)
        await self.producer.send(
            "incident-events", new_event(event, key=incident_id, tenant=TENANT)
        )

    def written(self, issue_id: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            issue = self.stub.issue_store.get(ORG, issue_id)
            return issue is not None and issue["status"] == "resolved"

        return check

    async def ready(self) -> bool:
        return (await readyz(self.client))[0] == 200

    def names(self, dependency: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            status, checks = await readyz(self.client)
            return status == 503 and checks.get(dependency) is False

        return check


@contextlib.asynccontextmanager
async def running_worker(kafka: KafkaSettings, dsn: str, tmp_path: Path) -> AsyncIterator[Worker]:
    """The worker as a process, ready, for a connection to the stand-in with two issues
    (8001, 8002); its log is printed if the test fails."""
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
    try:
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
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                worker = Worker(stub, producer, client, proc, log_path)
                await until("the worker to be ready", worker.ready, 30)
                yield worker
                assert proc.poll() is None, "the worker exited"
    except BaseException:
        if log_path.exists():
            sys.stderr.write(log_path.read_text()[-5000:])
        raise
    finally:
        with contextlib.suppress(Exception):  # the broker may be the one away
            await asyncio.wait_for(producer.stop(), 10)
        if proc is not None:
            stop_gracefully(proc, 15)


async def _written_back(dsn: str, incident_ids: tuple[str, ...]) -> bool:
    try:
        async with await psycopg.AsyncConnection.connect(dsn) as c:
            cur = await c.execute(
                "SELECT count(*) FROM sync_incidents"
                " WHERE written_status IS NOT NULL AND incident_id = ANY(%s)",
                (list(incident_ids),),
            )
            return bool((await cur.fetchone() or (0,))[0] == len(incident_ids))
    except psycopg.OperationalError:
        return False


@pytest.mark.timeout(120)
async def test_the_worker_writes_back_once_across_a_postgres_restart(
    kafka_settings: KafkaSettings, tmp_path: Path, dedicated_pg: PgCluster
) -> None:
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers, topic_prefix=f"y{uuid.uuid4().hex[:6]}."
    )
    dedicated_pg.start()
    dsn = dedicated_pg.dsn()
    migrate(dsn)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    async with running_worker(kafka, dsn, tmp_path) as worker:
        await worker.resolve(first, "8001")
        await until("the first write-back", worker.written("8001"), 30)
        dedicated_pg.stop("immediate")
        await worker.resolve(second, "8002")
        await until("/readyz to name postgres", worker.names("postgres"), 20)
        assert worker.proc.poll() is None, "the worker exited while Postgres was away"
        assert worker.puts("8002") == []  # its state could not be read: nothing written
        dedicated_pg.start()
        await until("the second write-back", worker.written("8002"), 45)
        await until(
            "both winners stored as written", lambda: _written_back(dsn, (first, second)), 30
        )
        await until("/readyz 200 again", worker.ready, 20)
        assert worker.puts("8001") == worker.puts("8002") == [{"status": "resolved"}]  # once each
    assert "loop failed; restarting after backoff" in worker.log.read_text()


@pytest.mark.timeout(180)
async def test_the_worker_writes_back_once_across_a_broker_crash(
    tmp_path: Path, dedicated_pg: PgCluster
) -> None:
    node = KafkaNode(tmp_path / "kafka", free_port(), free_port(), heap="384m")
    kafka = KafkaSettings(bootstrap_servers=node.bootstrap, topic_prefix="h.")
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        await asyncio.to_thread(node.start)
        dedicated_pg.start()
        dsn = dedicated_pg.dsn()
        migrate(dsn)
        async with running_worker(kafka, dsn, tmp_path) as worker:
            await worker.resolve(first, "8001")
            await until("the first write-back", worker.written("8001"), 30)
            await until("the first stored as written", lambda: _written_back(dsn, (first,)), 30)
            node.stop(sig=signal.SIGKILL)  # kill -9, reaped
            await until("/readyz to name kafka", worker.names("kafka"), 30)
            await asyncio.sleep(3)  # away a while: the worker's loops retry meanwhile
            assert worker.proc.poll() is None, "the worker exited while the broker was away"
            await asyncio.to_thread(node.start)
            await worker.resolve(second, "8002")  # its producer reconnects to the broker
            await until("the second write-back", worker.written("8002"), 60)
            await until("both stored as written", lambda: _written_back(dsn, (first, second)), 30)
            await until("/readyz 200 again", worker.ready, 30)
            assert worker.puts("8001") == worker.puts("8002") == [{"status": "resolved"}]
    finally:
        node.stop(sig=signal.SIGKILL)
        shutil.rmtree(tmp_path / "kafka", ignore_errors=True)
