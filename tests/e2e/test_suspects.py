"""Deploys through the API, suspects from the worker, into the read model and back out of the API."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_common.db import migrate
from blametrail_common.events import new_event
from blametrail_common.events.incidents import IncidentOpenedV1, IssueSnapshot, SentryRef
from blametrail_common.kafka import EventProducer, create_consumer, create_producer, run_batches
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.settings import KafkaSettings
from blametrail_devstack.logtools import end_offsets, project_until
from blametrail_devstack.pytest_plugin import Infra, create_database
from blametrail_mappings_api.app import create_app
from blametrail_mappings_api.repository import Repository, create_pool
from blametrail_mappings_api.settings import ApiSettings
from blametrail_mappings_api.store.outbox import Relay
from blametrail_projector.projection import PROJECTED_TOPICS, Projection
from blametrail_suspects.state import SuspectState
from blametrail_suspects.worker import INPUTS, SuspectsWorker

NOW = datetime.now(UTC).replace(microsecond=0)


async def test_deploys_api_worker_projection_and_incident_api(
    kafka_settings: KafkaSettings, infra: Infra
) -> None:
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers, topic_prefix=f"s{uuid.uuid4().hex[:6]}."
    )
    await ensure_topics(kafka)
    dsn = create_database(infra.server_dsn, f"bt_suspects_{uuid.uuid4().hex[:6]}")
    migrate(dsn)
    pool = create_pool(dsn, 4)
    await pool.open()
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    repo = Repository(pool, SecretBox(generate_key()))
    app = create_app(ApiSettings(public_ingest_url="https://hooks.example"), repo, {})
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
    stop = asyncio.Event()
    worker_task: asyncio.Task[None] | None = None
    try:
        auth = {"Authorization": f"Bearer {await repo.create_api_key('acme')}"}
        other = {"Authorization": f"Bearer {await repo.create_api_key('intruder')}"}
        svc = (
            await client.post(
                "/api/v1/services", headers=auth, json={"name": "Checkout", "slug": "checkout"}
            )
        ).json()["id"]
        async with pool.connection() as c:
            row = await (
                await c.execute("SELECT org_id FROM services WHERE id = %s", (svc,))
            ).fetchone()
        assert row is not None
        tenant = str(row["org_id"])

        def body(version: str, minutes_before: int, paths: list[str] | None) -> dict[str, Any]:
            finished = NOW - timedelta(minutes=minutes_before)
            return {
                "service_id": svc,
                "version": version,
                "environment": "production",
                "started_at": (finished - timedelta(minutes=4)).isoformat(),
                "finished_at": finished.isoformat(),
                "changed_paths": paths,
            }

        # The API: created, idempotent re-post, validation, tenancy, listing.
        first = await client.post(
            "/api/v1/deploys", headers=auth, json=body("checkout@1.4.0", 90, ["app/cart.py"])
        )
        assert first.status_code == 201, first.text
        again = await client.post(
            "/api/v1/deploys", headers=auth, json=body("checkout@1.4.0", 90, ["app/cart.py"])
        )
        assert again.status_code == 200
        assert again.json()["id"] == first.json()["id"]
        cause = await client.post(
            "/api/v1/deploys",
            headers=auth,
            json=body("checkout@1.5.0", 30, ["app/checkout/views.py"]),
        )
        assert cause.status_code == 201
        no_times = {k: v for k, v in body("x", 1, None).items() if not k.endswith("_at")}
        assert (
            await client.post("/api/v1/deploys", headers=auth, json=no_times)
        ).status_code == 422
        assert (
            await client.post("/api/v1/deploys", headers=other, json=body("y", 1, None))
        ).status_code == 422
        listed = (await client.get(f"/api/v1/deploys?service={svc}", headers=auth)).json()["items"]
        assert [d["version"] for d in listed] == ["checkout@1.4.0", "checkout@1.5.0"]
        since = (NOW - timedelta(minutes=60)).isoformat().replace("+00:00", "Z")
        recent = (await client.get("/api/v1/deploys", headers=auth, params={"since": since})).json()
        assert [d["version"] for d in recent["items"]] == ["checkout@1.5.0"]
        assert (await client.get("/api/v1/deploys", headers=other)).json()["items"] == []
        assert await Relay(pool, producer).relay_once() >= 4  # service + 3 deploy states

        # The worker: deploys loaded, then an incident arrives and is scored.
        state = SuspectState()
        worker = SuspectsWorker(state, producer)
        assert await worker.load_deploys(kafka) == 2
        group = f"suspects-{uuid.uuid4().hex[:6]}"
        consumer = create_consumer(kafka, INPUTS, group)
        await consumer.start()

        async def run_worker() -> None:
            try:
                await run_batches(consumer, worker.handle, stop)
            finally:
                await consumer.stop()

        worker_task = asyncio.create_task(run_worker())
        incident_id = str(uuid.uuid4())
        opened = IncidentOpenedV1(
            incident_id=incident_id,
            tenant_id=tenant,
            service_id=svc,
            source="sentry_issue",
            severity="sev2",
            status_at=NOW,
            sentry=SentryRef(connection_id="c", issue_id="42"),
            snapshot=IssueSnapshot(
                title="KeyError",
                first_seen=NOW,
                substatus="new",
                release="checkout@1.5.0",
                environment="production",
            ),
        )
        await producer.send("incident-events", new_event(opened, key=incident_id, tenant=tenant))
        await _until(kafka, {"incident-suspects": 1})

        # A late deploy record (deployed 10 minutes before first-seen, recorded only now).
        late = await client.post(
            "/api/v1/deploys", headers=auth, json=body("checkout@1.5.1", 10, None)
        )
        assert late.status_code == 201
        assert await Relay(pool, producer).relay_once() == 1
        await _until(kafka, {"incident-suspects": 2})
        stop.set()
        await worker_task

        # A restarted worker warms up from the log: the incident is known again, nothing published.
        fresh = SuspectsWorker(SuspectState(), producer)
        assert await fresh.load_deploys(kafka) == 3
        assert await fresh.warm_up(kafka, group) == 1
        assert list(fresh.state.incidents) == [incident_id]
        assert (await end_offsets(kafka, ["incident-suspects"]))[
            kafka.topic_prefix + "incident-suspects"
        ] == 2

        # Projection, then the incident API.
        end = await end_offsets(kafka, PROJECTED_TOPICS)
        await project_until(
            kafka, dsn, "projection", PROJECTED_TOPICS, Projection(producer).apply, end
        )
        shown = (await client.get(f"/api/v1/incidents/{incident_id}", headers=auth)).json()
        ranked = shown["suspects"]["ranked"]
        assert [s["version"] for s in ranked][:1] == ["checkout@1.5.0"]  # the release match
        assert "checkout@1.5.1" in [s["version"] for s in ranked]  # the late deploy is a candidate
        assert shown["suspects"]["candidates"] == 3
        top = ranked[0]
        assert "release" in {g["name"] for g in top["signals"]}
        assert abs(sum(g["contribution"] for g in top["signals"]) - top["score"]) < 1e-3
        assert "checkout@1.5.0" in top["explain"]
        assert (
            await client.get(f"/api/v1/incidents/{incident_id}", headers=other)
        ).status_code == 404
    finally:
        stop.set()
        if worker_task is not None:
            await asyncio.gather(worker_task, return_exceptions=True)
        await client.aclose()
        await producer.stop()
        await pool.close()


async def _until(kafka: KafkaSettings, want: dict[str, int], timeout_s: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    names = {kafka.topic_prefix + t: n for t, n in want.items()}
    while loop.time() < deadline:
        ends = await end_offsets(kafka, list(want))
        if all(ends[t] >= n for t, n in names.items()):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"topics did not reach {want}: {ends}")
