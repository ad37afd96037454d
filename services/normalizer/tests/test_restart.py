"""kill -9 of the normalizer while webhooks flow: restarted, it processes again within seconds
(not after the dead member's session expires), and no webhook is skipped."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
from blametrail_common.events import WebhookReceivedV1, body_sha256, decode, encode, new_event
from blametrail_common.events.audit import WebhookAuditedV1
from blametrail_common.kafka import EventProducer, create_consumer, create_producer
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.settings import KafkaSettings
from blametrail_devstack.stack import free_port
from blametrail_devstack.testkit import spawn
from blametrail_normalizer.settings import NormalizerSettings

BOUND_S = 15.0


def _raw(i: int) -> tuple[bytes, bytes]:
    body = b'{"action":"created","installation":{"uuid":"u"},"data":{"issue":{"id":"%d"}}}' % i
    payload = WebhookReceivedV1(
        connection_id="no-such-connection",  # audited as unknown: no control plane needed
        resource="issue",
        action="created",
        installation_uuid=None,
        signature_header="Sentry-Hook-Signature",
        request_id=f"req-{i}",
        hook_timestamp=str(int(time.time())),
        received_at=datetime.now(UTC),
        body_sha256=body_sha256(body),
        body=body.decode(),
    )
    env = new_event(payload, key=str(i))
    return str(i).encode(), encode(env)


async def test_kill_minus_nine_then_restart_resumes_processing_within_the_bound(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers, topic_prefix=f"r{uuid.uuid4().hex[:6]}."
    )
    await ensure_topics(kafka)
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "BLAMETRAIL_TOPIC_PREFIX": kafka.topic_prefix,
        "BLAMETRAIL_NORMALIZER_APP_ID": f"norm-restart-{uuid.uuid4().hex[:6]}",
        "BLAMETRAIL_NORMALIZER_PORT": str(port),
        "BLAMETRAIL_LOG_LEVEL": "WARNING",
    }
    log = tmp_path / "normalizer.log"
    sent_at: dict[str, float] = {}  # raw event id -> when it was sent
    seen_at: dict[str, float] = {}  # raw event id -> when its audit record arrived
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    audit = create_consumer(kafka, ["webhook-audit"], group_id=None)
    await audit.start()
    stop = asyncio.Event()

    async def flow() -> None:
        i = 0
        while not stop.is_set():
            key, value = _raw(i)
            await producer.send_many_raw("sentry-webhooks-raw", [(key, value)])
            sent_at[str(decode(value).id)] = time.monotonic()
            i += 1
            await asyncio.sleep(0.05)

    async def watch() -> None:
        while not stop.is_set():
            for batch in (await audit.getmany(timeout_ms=200)).values():
                for record in batch:
                    p = decode(record.value).payload
                    assert isinstance(p, WebhookAuditedV1)
                    seen_at.setdefault(str(p.raw_event_id), time.monotonic())

    async def first_output_after(t: float, timeout_s: float) -> float | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done = [seen_at[r] for r, s in list(sent_at.items()) if s > t and r in seen_at]
            if done:
                return min(done) - t
            await asyncio.sleep(0.05)
        return None

    tasks = [asyncio.create_task(flow()), asyncio.create_task(watch())]
    proc = spawn("blametrail_normalizer", env, log, cwd=tmp_path)  # faust data dir: cwd
    try:
        began = time.monotonic()
        assert await first_output_after(began, 60) is not None, log.read_text()[-3000:]
        await asyncio.sleep(2.0)  # steady state: committed offsets, a settled group
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed = time.monotonic()
        proc = spawn("blametrail_normalizer", env, log, cwd=tmp_path)  # faust data dir: cwd
        gap = await first_output_after(killed, 90)
        print(f"kill -9 -> first record processed again: {gap} s")
        assert gap is not None, log.read_text()[-3000:]
        assert gap < BOUND_S, (gap, log.read_text()[-3000:])
        stop.set()
        await asyncio.gather(*tasks)
        tasks = [asyncio.create_task(watch())]
        stop.clear()
        deadline = time.monotonic() + 30
        while set(sent_at) - set(seen_at) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        assert not set(sent_at) - set(seen_at), "a webhook was skipped across the kill"
        await asyncio.sleep(6)  # one lag report
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        source = f'topic="{kafka.topic_prefix}sentry-webhooks-raw"'
        lag = [line for line in metrics.splitlines() if line.startswith("blametrail_consumer_lag{")]
        assert any(source in line and env["BLAMETRAIL_NORMALIZER_APP_ID"] in line for line in lag)
        assert all(line.endswith(" 0.0") for line in lag if source in line), lag  # caught up
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        await audit.stop()
        await producer.stop()


def test_static_member_ids_are_stable_per_replica_and_unique_per_host() -> None:
    one = NormalizerSettings(port=8083)
    assert one.group_instance_id("pod-a") == one.group_instance_id("pod-a")  # a restart
    assert one.group_instance_id("pod-a") != one.group_instance_id("pod-b")
    same_host = NormalizerSettings(port=8093)  # a second replica on the host: its own port
    assert one.group_instance_id("host") != same_host.group_instance_id("host")
    named = NormalizerSettings(port=8083, instance_id="blue")
    assert named.group_instance_id("host") == "blametrail-normalizer-host-blue"
    assert NormalizerSettings(static_membership=False).group_instance_id("host") is None
