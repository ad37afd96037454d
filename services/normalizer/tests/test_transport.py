"""faust's worker consumer fetches with our fetch settings, not faust's fixed ones."""

from __future__ import annotations

import uuid

from blametrail_common.settings import KafkaSettings
from blametrail_normalizer.app import create_app
from blametrail_normalizer.settings import NormalizerSettings


async def test_the_worker_consumer_gets_the_kafka_fetch_settings() -> None:
    kafka = KafkaSettings(fetch_min_bytes=12_345, fetch_max_wait_ms=77)
    normalizer = create_app(NormalizerSettings(app_id=f"n-fetch-{uuid.uuid4().hex[:6]}"), kafka)
    app = normalizer.app
    # The consumer faust builds for the worker (its thread's), before it starts: the settings
    # its fetcher is then built with.
    consumer = app.consumer._thread._create_worker_consumer(app.transport)
    try:
        assert (consumer._fetch_min_bytes, consumer._fetch_max_wait_ms) == (12_345, 77)
        assert consumer._group_id == app.conf.id  # faust's own settings kept
    finally:
        await consumer.stop()
