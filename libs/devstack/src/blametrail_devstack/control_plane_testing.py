"""Development only: the control plane as the workers' end-to-end tests need it, in this process:
the real API (ASGI, on the session's Postgres) as one API key, an internal connection to the
Sentry stand-in with one project mapped to a service, only those changes relayed from the outbox
to the session's topics, and ``cp-connections`` read until it holds the connection. With the
raw webhook as ingest publishes it and the consume-into-Postgres loop the workers run. Used by the
reconciler's and the sync worker's tests.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from blametrail_common.crypto import SecretBox
from blametrail_common.events import ConnectionStateV1, WebhookReceivedV1, body_sha256
from blametrail_common.kafka import EventProducer, create_consumer
from blametrail_common.kafka.pgsink import ApplyBatch, run_into_postgres
from blametrail_common.kafka.table import CompactedTable
from blametrail_common.settings import KafkaSettings
from blametrail_common.testing import Loop
from blametrail_common.topics import topic_name
from blametrail_mappings_api.app import create_app
from blametrail_mappings_api.repository import Repository, create_pool
from blametrail_mappings_api.settings import ApiSettings
from blametrail_mappings_api.store.outbox import Relay

from blametrail_devstack.testkit import until

__all__ = ["ControlPlane", "SentryOrg", "into_postgres", "issue_webhook", "running_control_plane"]


@dataclass(frozen=True)
class SentryOrg:
    """The Sentry organization connected (an internal integration on the stand-in at ``url``)."""

    url: str
    slug: str
    token: str
    client_secret: str
    project: str  # mapped to the service


@dataclass
class ControlPlane:
    api: httpx.AsyncClient
    """The REST API; ``auth`` is its API key's header."""
    auth: dict[str, str]
    relay: Relay
    table: CompactedTable[ConnectionStateV1]
    """``cp-connections``, started: it holds the connection."""
    connection_id: str
    service_id: str
    tenant_id: str

    async def relay_all(self) -> None:
        """Publish every change the outbox holds now."""
        while await self.relay.relay_once():
            pass


@asynccontextmanager
async def running_control_plane(
    kafka: KafkaSettings,
    database_url: str,
    producer: EventProducer,
    box: SecretBox,
    org: SentryOrg,
) -> AsyncIterator[ControlPlane]:
    """The API with ``org`` connected and its project mapped; the outbox relayed once (only
    these changes: other tests' rows are marked sent) and ``cp-connections`` caught up. The
    relay is not left running: call :meth:`ControlPlane.relay_all` or run ``relay.run``."""
    pool = create_pool(database_url, 4)
    await pool.open()
    repo = Repository(pool, box)
    api = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(ApiSettings(), repo, {})),
        base_url="http://api",
    )
    table = CompactedTable(kafka, "cp-connections", ConnectionStateV1)
    try:
        key = await repo.create_api_key(f"cp-{uuid.uuid4().hex[:6]}")
        auth = {"Authorization": f"Bearer {key}"}
        made = await api.post(
            "/api/v1/integrations/sentry/connections",
            headers=auth,
            json={
                "mode": "internal",
                "sentry_org_slug": org.slug,
                "api_base_url": org.url,
                "client_secret": org.client_secret,
                "auth_token": org.token,
            },
        )
        assert made.status_code == 201, made.text
        conn_id = made.json()["id"]
        slug = f"checkout-{uuid.uuid4().hex[:4]}"
        svc = await api.post(
            "/api/v1/services", headers=auth, json={"name": "Checkout", "slug": slug}
        )
        assert svc.status_code == 201, svc.text
        svc_id = svc.json()["id"]
        mapped = await api.post(
            "/api/v1/integrations/sentry/mappings",
            headers=auth,
            json={
                "connection_id": conn_id,
                "sentry_project_slug": org.project,
                "service_id": svc_id,
            },
        )
        assert mapped.status_code == 201, mapped.text
        async with pool.connection() as c:  # only this test's changes go to its topics
            await c.execute(
                "UPDATE outbox SET sent_at = now() WHERE sent_at IS NULL AND key NOT IN (%s, %s, %s)",
                (conn_id.encode(), svc_id.encode(), f"{conn_id}:{org.project}".encode()),
            )
        cp = ControlPlane(api, auth, Relay(pool, producer), table, conn_id, svc_id, "")
        await cp.relay_all()
        await table.start()

        async def known() -> bool:
            return table.get(conn_id) is not None

        await until("the connection", known, timeout_s=30)
        state = table.get(conn_id)
        assert state is not None
        cp.tenant_id = state.tenant_id
        yield cp
    finally:
        await table.stop()
        await api.aclose()
        await pool.close()


def issue_webhook(
    connection_id: str, action: str, issue: dict[str, Any], at: datetime | None = None
) -> WebhookReceivedV1:
    """An issue webhook as ingest publishes it (verified, bytes untouched), received at ``at``."""
    body = orjson.dumps(
        {"action": action, "installation": {"uuid": None}, "data": {"issue": issue}}
    ).decode()
    now = at or datetime.now(UTC)
    return WebhookReceivedV1(
        connection_id=connection_id,
        resource="issue",
        action=action,
        installation_uuid=None,
        signature_header="Sentry-Hook-Signature",
        request_id=uuid.uuid4().hex,
        hook_timestamp=str(int(now.timestamp())),
        received_at=now,
        body_sha256=body_sha256(body.encode()),
        body=body,
    )


def into_postgres(
    kafka: KafkaSettings, topics: Sequence[str], database_url: str, group: str, apply: ApplyBatch
) -> Loop:
    """A loop for :func:`blametrail_common.testing.background`: ``topics`` (registry names)
    applied by ``apply`` with a consumer of its own in ``group``, as the workers run it. Any
    error ends the loop (no restart: the test sees it)."""

    async def loop(stop: asyncio.Event) -> None:
        consumer = create_consumer(kafka, [], group)
        await consumer.start()
        try:
            names = [topic_name(t, kafka.topic_prefix) for t in topics]
            await run_into_postgres(consumer, names, database_url, group, apply, stop)
        finally:
            await consumer.stop()

    return loop
