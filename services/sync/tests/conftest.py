"""Write-back end to end on real Kafka and Postgres with the Sentry stand-in: the API (incident
actions, outbox relay), a real ingest (Sentry's webhooks, our echoes included, come back through
it), the normalizer, the projection and the write-back worker, all in this process."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from aiokafka.structs import TopicPartition
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_common.events import WebhookReceivedV1, decode, new_event
from blametrail_common.events.incidents import incident_id_for
from blametrail_common.kafka import EventProducer, create_consumer, create_producer
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.kafka.pgsink import load_offsets
from blametrail_common.kafka.reader import open_reader
from blametrail_common.sentry_api import HttpxSentryApi, RetryPolicy
from blametrail_common.sentry_credentials import ConnectionCredentials
from blametrail_common.settings import KafkaSettings
from blametrail_common.testing import background
from blametrail_common.topics import topic_name
from blametrail_devstack.control_plane_testing import (
    SentryOrg,
    into_postgres,
    issue_webhook,
    running_control_plane,
)
from blametrail_devstack.ingest_testing import make_settings, running_ingest
from blametrail_devstack.testkit import until
from blametrail_normalizer.app import create_app as create_normalizer
from blametrail_normalizer.settings import NormalizerSettings
from blametrail_projector.projection import PROJECTED_TOPICS, Projection
from blametrail_sentry_stub import StubState, serve
from blametrail_sentry_stub.issue_update import ALL_SCOPES
from blametrail_sync.worker import WriteBacks

ORG = "acme"
PROJECT = "checkout-api"
SECRET = "sync-client-secret"
RAW = "sentry-webhooks-raw"


class _Secrets:
    def __init__(self) -> None:
        self.known: dict[str, list[str]] = {}

    def secrets_for(self, connection_id: str) -> list[str] | None:
        return self.known.get(connection_id)

    def ready(self) -> bool:
        return True


@dataclass
class Pipeline:
    kafka: KafkaSettings
    dsn: str
    stub: StubState
    stub_url: str
    producer: EventProducer
    api: httpx.AsyncClient
    auth: dict[str, str]
    connection_id: str
    tenant_id: str
    group: str

    def incident_of(self, issue_id: str) -> str:
        return incident_id_for(self.tenant_id, "issue", issue_id)

    async def open_issue(self, issue_id: str) -> str:
        """An issue in the stand-in and its ``issue.created`` webhook; waits for the incident."""
        issue = self.stub.issue_store.create(ORG, PROJECT, issue_id=issue_id)
        await self.webhook("created", {**issue, "web_url": f"https://x/{issue_id}"})
        incident = self.incident_of(issue_id)
        await until(f"incident of {issue_id}", lambda: self._exists(incident), timeout_s=120)
        return incident

    async def _exists(self, incident: str) -> bool:
        return bool(await self.rows("SELECT 1 FROM incidents WHERE incident_id = %s", incident))

    async def webhook(self, action: str, issue: dict[str, Any]) -> None:
        raw = issue_webhook(self.connection_id, action, issue)
        await self.producer.send("sentry-webhooks-raw", new_event(raw, key=str(issue["id"])))

    async def act(self, incident: str, action: str) -> httpx.Response:
        return await self.api.post(f"/api/v1/incidents/{incident}/{action}", headers=self.auth)

    async def user_update(self, issue_id: str, **body: Any) -> None:
        """A person changes the issue in Sentry's UI (webhooks with a user actor)."""
        async with httpx.AsyncClient() as http:
            answer = await http.post(
                f"{self.stub_url}/_stub/issues/{ORG}/{issue_id}/user-update", json=body
            )
            answer.raise_for_status()

    def app_updates(self, issue_id: str) -> list[dict[str, Any]]:
        """Updates of the issue made with an app's token (ours)."""
        return [
            u
            for u in self.stub.apps.updates
            if u["issue_id"] == issue_id and u["actor"]["type"] == "application"
        ]

    async def status(self, incident: str) -> str | None:
        found = await self.rows("SELECT status FROM incidents WHERE incident_id = %s", incident)
        return str(found[0][0]) if found else None

    async def timeline(self, incident: str) -> list[str]:
        found = await self.rows(
            "SELECT event_type FROM incident_timeline WHERE incident_id = %s"
            " ORDER BY occurred_at, log_partition, log_offset",
            incident,
        )
        return [str(r[0]) for r in found]

    async def synced(self) -> bool:
        """The worker has applied everything on ``incident-events`` so far and the stand-in has
        no webhook in flight."""
        if self.stub.apps._tasks:
            return False
        consumer = create_consumer(self.kafka, [], None)
        await consumer.start()
        try:
            name = topic_name("incident-events", self.kafka.topic_prefix)
            parts = consumer.partitions_for_topic(name) or set()
            if not parts:
                await consumer.topics()
                parts = consumer.partitions_for_topic(name) or set()
            ends = await consumer.end_offsets([TopicPartition(name, p) for p in parts])
        finally:
            await consumer.stop()
        async with await psycopg.AsyncConnection.connect(self.dsn) as c:
            stored = await load_offsets(c, self.group)
        return all(stored.get(tp, 0) >= end for tp, end in ends.items())

    async def redeliver(self, issue_id: str, action: str, actor: str = "user") -> int:
        """Sentry's ``issue.<action>`` webhooks of ``issue_id`` by an ``actor`` of that type,
        read on ``sentry-webhooks-raw`` and sent there again as they are (what ingest's spool
        fallback does to a batch Kafka took late as well); how many."""
        found = []
        async with open_reader(self.kafka, [RAW], name="redeliver") as reader:
            ends = await reader.ends()
            while [tp for tp, end in ends.items() if await reader.consumer.position(tp) < end]:
                for records in (await reader.consumer.getmany(timeout_ms=1000)).values():
                    for r in records:
                        raw = decode(r.value)
                        assert isinstance(raw.payload, WebhookReceivedV1)
                        body = orjson.loads(raw.payload.body)
                        if (
                            body.get("action") == action
                            and body["data"]["issue"]["id"] == issue_id
                            and body["actor"]["type"] == actor
                        ):
                            found.append(r)
        for r in found:
            await self.producer.send_raw(RAW, r.key, r.value, r.headers)
        return len(found)

    async def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        async with await psycopg.AsyncConnection.connect(self.dsn) as c:
            cur = await c.execute(sql, params)
            return list(await cur.fetchall())


@contextlib.asynccontextmanager
async def pipeline(
    kafka_settings: KafkaSettings,
    database_url: str,
    spool: Path,
    *,
    scopes: frozenset[str] = ALL_SCOPES,
    worker_key: str | None = None,
) -> AsyncIterator[Pipeline]:
    """``worker_key``: the worker decrypts tokens with this key instead of the API's (so it
    cannot read them for now, as during a key rotation in flight)."""
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers,
        topic_prefix=f"s{uuid.uuid4().hex[:6]}.",
    )
    await ensure_topics(kafka)
    box = SecretBox(generate_key())
    stub = StubState()
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    http = httpx.AsyncClient()
    secrets = _Secrets()
    normalizer = None
    try:
        async with (
            serve(stub) as stub_url,
            running_ingest(kafka, make_settings(spool), secrets) as (ingest_url, _),
        ):
            token = stub.add_internal_token(ORG)
            org = SentryOrg(stub_url, ORG, token, SECRET, PROJECT)
            async with running_control_plane(kafka, database_url, producer, box, org) as cp:
                secrets.known[cp.connection_id] = [SECRET]
                installed = await http.post(
                    f"{stub_url}/_stub/apps",
                    json={
                        "org": ORG,
                        "webhook_url": f"{ingest_url}/webhooks/sentry/{cp.connection_id}",
                        "client_secret": SECRET,
                        "token": token,
                        "scopes": sorted(scopes),
                    },
                )
                assert installed.status_code == 201, installed.text
                normalizer = create_normalizer(
                    NormalizerSettings(app_id=f"sync-norm-{uuid.uuid4().hex[:6]}"), kafka
                )
                normalizer.app.finalize()
                await normalizer.app.start()
                fast = RetryPolicy(base_delay_s=0.05, max_attempts=3, max_rate_limit_wait_s=30)
                worker = WriteBacks(
                    HttpxSentryApi(http, fast),
                    cp.table,
                    ConnectionCredentials(cp.table, SecretBox(worker_key) if worker_key else box),
                    producer,
                )
                projection = f"sync-projection-{uuid.uuid4().hex[:6]}"
                group = f"sync-{uuid.uuid4().hex[:6]}"

                async def relaying(stop: asyncio.Event) -> None:
                    await cp.relay.run(stop, database_url)

                async with background(
                    into_postgres(
                        kafka,
                        PROJECTED_TOPICS,
                        database_url,
                        projection,
                        Projection(producer).apply,
                    ),
                    into_postgres(kafka, ["incident-events"], database_url, group, worker.apply),
                    relaying,
                ):
                    yield Pipeline(
                        kafka,
                        database_url,
                        stub,
                        stub_url,
                        producer,
                        cp.api,
                        cp.auth,
                        cp.connection_id,
                        cp.tenant_id,
                        group,
                    )
    finally:
        if normalizer is not None:
            await normalizer.close()
        await http.aclose()
        await producer.stop()


@pytest.fixture
def make_pipeline(kafka_settings: KafkaSettings, database_url: str, tmp_path: Path) -> Any:
    """``async with make_pipeline(scopes=...) as p``: see :func:`pipeline`."""

    def make(**over: Any) -> Any:
        return pipeline(kafka_settings, database_url, tmp_path / uuid.uuid4().hex[:6], **over)

    return make
