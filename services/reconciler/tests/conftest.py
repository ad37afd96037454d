"""A pipeline for sweeps on real Kafka and Postgres with the Sentry stand-in: the control plane
(API + outbox relay), the normalizer, the projection and the enricher, all in this process."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import psycopg
import pytest
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_common.events import new_event
from blametrail_common.events.incidents import incident_id_for
from blametrail_common.kafka import EventProducer, consume, create_producer
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.sentry_api import HttpxSentryApi, RetryPolicy
from blametrail_common.sentry_credentials import ConnectionCredentials as SyncCredentials
from blametrail_common.settings import KafkaSettings
from blametrail_common.testing import Loop, background
from blametrail_devstack.control_plane_testing import (
    SentryOrg,
    into_postgres,
    issue_webhook,
    running_control_plane,
)
from blametrail_devstack.testkit import until
from blametrail_enricher.credentials import ConnectionCredentials
from blametrail_enricher.pipeline import Enricher
from blametrail_mappings_api.store.outbox import Relay
from blametrail_normalizer.app import create_app as create_normalizer
from blametrail_normalizer.settings import NormalizerSettings
from blametrail_projector.projection import PROJECTED_TOPICS, Projection
from blametrail_reconciler.connections import Connections
from blametrail_reconciler.settings import ReconcilerSettings
from blametrail_reconciler.store import SweepRow
from blametrail_reconciler.sweep import Sweeper
from blametrail_sentry_stub import StubState, serve
from blametrail_sentry_stub.state import Token
from blametrail_sync.worker import WriteBacks

ORG = "acme"
PROJECT = "checkout-api"


@dataclass
class Pipeline:
    kafka: KafkaSettings
    dsn: str
    stub: StubState
    producer: EventProducer
    connection_id: str
    tenant_id: str
    connections: Connections
    sweeper: Sweeper
    normalizer: Any
    box: SecretBox
    secret_key: str
    """The key of ``box`` (``BLAMETRAIL_SECRET_KEYS`` of a reconciler run as a process)."""
    api: httpx.AsyncClient
    auth: dict[str, str]
    relay: Relay

    async def act(self, issue_id: str, action: str, **body: Any) -> None:
        """An incident action taken in BlameTrail (the API), its command relayed from the
        outbox; waits for the read model to show it."""
        incident = self.incident_of(issue_id)
        answer = await self.api.post(
            f"/api/v1/incidents/{incident}/{action}", headers=self.auth, json=body or None
        )
        assert answer.status_code == 202, answer.text
        while await self.relay.relay_once():
            pass

        async def shown() -> bool:
            return bool(
                await self.rows(
                    "SELECT 1 FROM incident_timeline WHERE incident_id = %s::uuid"
                    " AND event_type = 'incident.action' AND payload ->> 'action_id' = %s",
                    incident,
                    answer.json()["action_id"],
                )
            )

        await until(f"{action} of {issue_id}", shown, timeout_s=120)

    async def set_writeback(self, on: bool) -> None:
        answer = await self.api.patch(
            f"/api/v1/integrations/sentry/connections/{self.connection_id}",
            headers=self.auth,
            json={"writeback": on},
        )
        assert answer.status_code == 200, answer.text
        while await self.relay.relay_once():
            pass

        async def arrived() -> bool:
            conn = self.connections.get(self.connection_id)
            return conn is not None and conn.writeback is on

        await until("the connection's write-back setting", arrived, timeout_s=30)

    def incident_of(self, issue_id: str) -> str:
        return incident_id_for(self.tenant_id, "issue", issue_id)

    async def sweep(self) -> SweepRow:
        conn = self.connections.get(self.connection_id)
        assert conn is not None
        creds = self.connections.credentials(conn)
        assert creds is not None
        row = await self.sweeper.sweep(conn, creds)
        assert row is not None
        return row

    async def webhook(self, action: str, issue: dict[str, Any], at: datetime | None = None) -> None:
        """An issue webhook as ingest publishes it (verified, bytes untouched), sent at ``at``."""
        raw = issue_webhook(self.connection_id, action, issue, at)
        await self.producer.send("sentry-webhooks-raw", new_event(raw, key=str(issue["id"])))

    async def open_issues(self, ids: list[str]) -> None:
        """Issues in the stand-in and their ``issue.created`` webhooks, then wait for the
        incidents."""
        for issue_id in ids:
            issue = self.stub.issue_store.create(ORG, PROJECT, issue_id=issue_id)
            await self.webhook("created", {**issue, "web_url": f"https://x/{issue_id}"})
        await until(f"{len(ids)} incidents", lambda: self._count_open(ids, len(ids)), timeout_s=180)

    async def _count_open(self, ids: list[str], n: int) -> bool:
        return await self.count("incidents", [self.incident_of(i) for i in ids]) >= n

    async def count(self, table: str, incident_ids: list[str], where: str = "true") -> int:
        async with await psycopg.AsyncConnection.connect(self.dsn) as c:
            cur = await c.execute(
                f"SELECT count(*) FROM {table} WHERE incident_id = ANY(%s::uuid[]) AND {where}",  # noqa: S608 - test-only, constant arguments
                (incident_ids,),
            )
            row = await cur.fetchone()
            return int(row[0]) if row else 0

    async def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        async with await psycopg.AsyncConnection.connect(self.dsn) as c:
            cur = await c.execute(sql, params)
            return list(await cur.fetchall())


@contextlib.asynccontextmanager
async def pipeline(
    kafka_settings: KafkaSettings,
    database_url: str,
    *,
    enrich: bool = False,
    write_back: frozenset[str] | None = None,
    **over: Any,
) -> AsyncIterator[Pipeline]:
    """``write_back``: run the write-back worker too, the app installed in the stand-in with
    these scopes (without ``event:write`` Sentry refuses its updates with a 403)."""
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers,
        topic_prefix=f"r{uuid.uuid4().hex[:6]}.",
    )
    await ensure_topics(kafka)
    secret_key = generate_key()
    box = SecretBox(secret_key)
    stub = StubState()
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    http = httpx.AsyncClient()
    normalizer = None
    try:
        async with serve(stub) as stub_url:
            token = stub.add_internal_token(ORG)
            org = SentryOrg(stub_url, ORG, token, "reconcile-secret", PROJECT)
            async with running_control_plane(kafka, database_url, producer, box, org) as cp:
                normalizer = create_normalizer(
                    NormalizerSettings(app_id=f"rec-norm-{uuid.uuid4().hex[:6]}"), kafka
                )
                normalizer.app.finalize()
                await normalizer.app.start()
                fast = RetryPolicy(base_delay_s=0.05, max_rate_limit_wait_s=120)
                table = cp.table
                enricher = Enricher(
                    HttpxSentryApi(http, fast),
                    ConnectionCredentials(table, box),
                    producer,
                    incident_url="https://blametrail.example/incidents/{incident_id}",
                )

                projection = f"rec-projection-{uuid.uuid4().hex[:6]}"
                apply = Projection(producer).apply
                loops: list[Loop] = [
                    into_postgres(kafka, PROJECTED_TOPICS, database_url, projection, apply)
                ]
                if enrich:
                    group = f"rec-enricher-{uuid.uuid4().hex[:6]}"

                    async def enriching(stop: asyncio.Event) -> None:
                        await consume(kafka, ["incident-events"], group, enricher.handle, stop)

                    loops.append(enriching)
                if write_back is not None:
                    app = stub.apps.install(
                        ORG, "http://127.0.0.1:9/unused", "reconcile-secret", scopes=write_back
                    )
                    stub.tokens[token] = Token(token, ORG, installation=app.installation)
                    worker = WriteBacks(
                        HttpxSentryApi(http, fast), table, SyncCredentials(table, box), producer
                    )
                    group = f"rec-sync-{uuid.uuid4().hex[:6]}"
                    loops.append(
                        into_postgres(kafka, ["incident-events"], database_url, group, worker.apply)
                    )
                settings = ReconcilerSettings(settle_s=0, **over)
                sweeper = Sweeper(HttpxSentryApi(http, fast), producer, database_url, settings)
                async with background(*loops):
                    yield Pipeline(
                        kafka,
                        database_url,
                        stub,
                        producer,
                        cp.connection_id,
                        cp.tenant_id,
                        Connections(table, box, producer),
                        sweeper,
                        normalizer,
                        box,
                        secret_key,
                        cp.api,
                        cp.auth,
                        cp.relay,
                    )
    finally:
        if normalizer is not None:
            await normalizer.close()
        await http.aclose()
        await producer.stop()


@pytest.fixture
def make_pipeline(kafka_settings: KafkaSettings, database_url: str) -> Any:
    """``async with make_pipeline(enrich=..., **settings) as p``: see :func:`pipeline`."""

    def make(**over: Any) -> Any:
        return pipeline(kafka_settings, database_url, **over)

    return make
