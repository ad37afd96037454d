"""faust's aiokafka transport with the fetch settings every other consumer of ours has.

faust builds its worker consumer itself, with ``fetch_max_wait_ms=1500`` and aiokafka's
``fetch_min_bytes=1``, and offers no setting for either; under a steady trickle of webhooks each
fetch then carries one or two records, and both the broker and this process pay a round trip
(and faust its hand-over from the consumer thread) per record. This transport gives the worker
consumer ``BLAMETRAIL_KAFKA_FETCH_MIN_BYTES`` / ``_FETCH_MAX_WAIT_MS`` instead, as
:func:`~blametrail_common.kafka.create_consumer` gives every aiokafka consumer.
"""

from __future__ import annotations

from typing import Any

import faust
from blametrail_common.settings import KafkaSettings
from faust.transport.drivers import aiokafka as driver

__all__ = ["install_transport"]


def install_transport(app: faust.App, kafka: KafkaSettings) -> None:
    """Make ``app`` consume through a transport whose worker consumer fetches as ours do (call
    before the app starts)."""

    class ConsumerThread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            # Read by AIOKafkaConsumer.start() when it builds its fetcher (no public setter).
            consumer._fetch_min_bytes = kafka.fetch_min_bytes
            consumer._fetch_max_wait_ms = kafka.fetch_max_wait_ms
            return consumer

    class FetchingConsumer(driver.Consumer):
        def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class Transport(driver.Transport):
        Consumer = FetchingConsumer

    app.transport = Transport(app.conf.broker_consumer, app)
