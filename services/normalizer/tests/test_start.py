"""A normalizer started while Kafka is away waits for it (alive, not ready naming kafka) instead
of exiting: faust's worker ends the process when it cannot bootstrap, which under Kubernetes is a
crash loop whose backoff outlasts the outage."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
from blametrail_common.settings import KafkaSettings
from blametrail_devstack.stack import free_port
from blametrail_devstack.testkit import spawn
from blametrail_normalizer.__main__ import wait_for_kafka
from blametrail_normalizer.settings import NormalizerSettings


def test_started_without_kafka_it_stays_alive_and_names_kafka(tmp_path: Path) -> None:
    port, absent = free_port(), free_port()  # nothing listens on ``absent``
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{absent}",
        "BLAMETRAIL_NORMALIZER_PORT": str(port),
    }
    proc = spawn("blametrail_normalizer", env, tmp_path / "normalizer.log", cwd=tmp_path)
    try:
        deadline, answers = time.monotonic() + 20, []
        while time.monotonic() < deadline and len(answers) < 5:
            assert proc.poll() is None, (tmp_path / "normalizer.log").read_text()[-3000:]
            try:
                alive = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
            except httpx.TransportError:
                time.sleep(0.3)
                continue
            answers.append((alive.status_code, ready.status_code, ready.json()["checks"]))
            time.sleep(1)
        assert answers == [(200, 503, {"kafka": False})] * 5
        assert proc.poll() is None  # still waiting, several failed attempts later
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0  # SIGTERM while waiting: a clean exit


async def test_waiting_ends_as_soon_as_the_cluster_answers(kafka_settings: KafkaSettings) -> None:
    settings = NormalizerSettings(port=free_port())
    started = time.monotonic()
    assert await wait_for_kafka(settings, kafka_settings)
    assert time.monotonic() - started < 10
