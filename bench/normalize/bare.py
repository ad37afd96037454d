"""The baseline of bench/normalize: consume the raw webhooks and produce one record each, no
processing. The same consumer group semantics as the normalizer (offsets committed after the
outputs are acknowledged), the same producer settings (``create_producer``, linger 0), the same
output topic. Prints ``ready`` once it owns its partitions; stops on SIGTERM."""

from __future__ import annotations

import asyncio
import sys

from blametrail_common.kafka import create_consumer, create_producer
from blametrail_common.kafka.consumer import install_stop_signals
from blametrail_common.settings import KafkaSettings
from blametrail_common.topics import topic_name


async def main() -> None:
    kafka = KafkaSettings()
    stop = asyncio.Event()
    install_stop_signals(stop)
    consumer = create_consumer(kafka, ["sentry-webhooks-raw"], group_id="bench-normalize-bare")
    producer = create_producer(kafka, linger_ms=0)
    out = topic_name("incident-events", kafka.topic_prefix)
    await consumer.start()
    await producer.start()
    announced = False
    try:
        while not stop.is_set():
            polled = await consumer.getmany(timeout_ms=200, max_records=500)
            if not announced and consumer.assignment():
                print("ready", flush=True)
                announced = True
            futures = [
                await producer.send(out, key=r.key, value=r.value, headers=list(r.headers))
                for records in polled.values()
                for r in records
            ]
            if futures:
                await asyncio.gather(*futures)
                await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
