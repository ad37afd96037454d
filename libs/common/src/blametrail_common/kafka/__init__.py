"""The one way services build Kafka producers and consumers (aiokafka)."""

from blametrail_common.kafka.consumer import BatchHandler, consume, create_consumer, run_batches
from blametrail_common.kafka.dlq import DLQ_HEADERS, publish_to_dlq
from blametrail_common.kafka.producer import EventProducer, create_producer

__all__ = [
    "DLQ_HEADERS",
    "BatchHandler",
    "EventProducer",
    "consume",
    "create_consumer",
    "create_producer",
    "publish_to_dlq",
    "run_batches",
]
