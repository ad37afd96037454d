"""Ingest starting up: a valid webhook never gets a 4xx because the connections table has not
loaded yet; the spool reports the age of its oldest record."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_common.events import ConnectionStateV1, encode, new_event
from blametrail_common.kafka import EventProducer, create_producer
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.kafka.table import CompactedTable
from blametrail_common.settings import KafkaSettings
from blametrail_common.signature import sign
from blametrail_devstack.ingest_testing import make_settings, running_ingest
from blametrail_devstack.stack import free_port
from blametrail_devstack.testkit import spawn
from blametrail_ingest.connections import ConnectionSecrets
from blametrail_ingest.spool import Spool

BODY = b'{"action":"resolved","installation":{"uuid":"u"},"data":{"issue":{"id":"42"}}}'
SECRET = "startup-secret"


def _headers() -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Sentry-Hook-Resource": "issue",
        "Sentry-Hook-Signature": sign(BODY, SECRET),
    }


def _state(connection_id: str, secret_enc: str) -> ConnectionStateV1:
    return ConnectionStateV1(
        connection_id=connection_id,
        tenant_id="acme",
        mode="internal",
        enabled=True,
        sentry_org_slug="acme",
        api_base_url="https://sentry.io",
        client_secrets_enc=[secret_enc],
        updated_at=datetime.now(UTC),
    )


async def _publish_connection(kafka: KafkaSettings, box: SecretBox, others: int = 0) -> str:
    """One connection signed with ``SECRET``, after ``others`` versions of other connections
    (a table that takes a moment to load, as a real one with history does)."""
    connection_id = f"c-{uuid.uuid4().hex[:8]}"
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    try:
        filler = encode(new_event(_state("other", box.encrypt("other")), key="other"))
        records = [(f"other-{i % 500}".encode(), filler) for i in range(others)]
        for start in range(0, len(records), 5000):
            await producer.send_many_raw("cp-connections", records[start : start + 5000])
        state = _state(connection_id, box.encrypt(SECRET))
        await producer.send("cp-connections", new_event(state, key=connection_id))
    finally:
        await producer.stop()
    return connection_id


async def test_no_valid_webhook_gets_a_4xx_from_the_first_instant_ingest_listens(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """``python -m blametrail_ingest`` against a cp-connections topic that holds the connection;
    eight clients fire signed webhooks at its port from before it listens: every answer is 200
    (a refused connection is no answer: it is retried at once)."""
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers, topic_prefix=f"s{uuid.uuid4().hex[:6]}."
    )
    await ensure_topics(kafka)
    key = generate_key()
    connection_id = await _publish_connection(kafka, SecretBox(key), others=40_000)
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "BLAMETRAIL_TOPIC_PREFIX": kafka.topic_prefix,
        "BLAMETRAIL_SECRET_KEYS": key,
        "BLAMETRAIL_INGEST_PORT": str(port),
        "BLAMETRAIL_INGEST_SPOOL_DIR": str(tmp_path / "spool"),
        "BLAMETRAIL_LOG_LEVEL": "WARNING",
    }
    statuses: Counter[int] = Counter()
    log = tmp_path / "ingest.log"
    proc = spawn("blametrail_ingest", env, log)
    try:

        async def fire(client: httpx.AsyncClient, deadline: float) -> None:
            while time.monotonic() < deadline and statuses[200] < 200:
                try:
                    resp = await client.post(
                        f"http://127.0.0.1:{port}/webhooks/sentry/{connection_id}",
                        content=BODY,
                        headers=_headers(),
                    )
                except httpx.TransportError:  # not listening yet
                    await asyncio.sleep(0.001)
                    continue
                statuses[resp.status_code] += 1

        deadline = time.monotonic() + 45
        async with httpx.AsyncClient(timeout=5) as client:
            await asyncio.gather(*(fire(client, deadline) for _ in range(8)))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert statuses[200] >= 200, (statuses, log.read_text()[-3000:])
    assert set(statuses) == {200}, statuses


async def test_internal_webhooks_get_503_with_retry_after_until_the_table_has_loaded(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """The in-process app while its table is still loading: 503 + Retry-After, /readyz names
    ``connections``; once loaded, 200 (and it stays loaded)."""
    box = SecretBox(generate_key())
    connection_id = await _publish_connection(kafka_settings, box)
    table = CompactedTable(kafka_settings, "cp-connections", ConnectionStateV1)
    secrets = ConnectionSecrets(table, box)
    async with (
        running_ingest(kafka_settings, make_settings(tmp_path / "spool"), secrets) as (url, _),
        httpx.AsyncClient(base_url=url) as client,
    ):
        early = await client.post(
            f"/webhooks/sentry/{connection_id}", content=BODY, headers=_headers()
        )
        assert early.status_code == 503
        assert early.headers["retry-after"] == "1"
        assert early.json()["error"] == "not_ready"
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"publish_path": True, "connections": False}
        await table.start()
        try:
            ok = await client.post(
                f"/webhooks/sentry/{connection_id}", content=BODY, headers=_headers()
            )
            assert ok.status_code == 200
            assert (await client.get("/readyz")).status_code == 200
            table.ready.clear()  # what a reader reconnecting could do: loaded stays loaded
            again = await client.post(
                f"/webhooks/sentry/{connection_id}", content=BODY, headers=_headers()
            )
            assert again.status_code == 200
            unknown = await client.post("/webhooks/sentry/nope", content=BODY, headers=_headers())
            assert unknown.status_code == 404
        finally:
            await table.stop()


async def test_spool_reports_the_age_of_its_oldest_unforwarded_record(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10**9)
    assert spool.oldest_age_s() == 0.0
    await spool.append_many([(b"k", b"first")])
    t_first = time.time()
    await asyncio.sleep(0.05)
    await spool.append_many([(b"k", b"second"), (b"k", b"third")])
    assert 0.04 < spool.oldest_age_s() < 5
    first, second, third = spool.read_batch()
    spool.mark_forwarded(first)
    assert spool.oldest_age_s(now=t_first + 10) < 10  # the second round's age now
    spool.mark_forwarded(second)  # half of a round forwarded: its age still counts
    assert spool.oldest_age_s() > 0
    spool.mark_forwarded(third)
    assert spool.oldest_age_s() == 0.0

    # A later process dates what an earlier one left behind by the record itself.
    await spool.append_many([(b"k", b"left behind")])
    restarted = Spool(tmp_path, 10**9, written_at=lambda value: 1_000.0)
    assert restarted.oldest_age_s(now=1_060.0) == 60.0
    undated = Spool(tmp_path, 10**9)  # no way to read the record: the segment's mtime
    assert 0 <= undated.oldest_age_s() < 5
