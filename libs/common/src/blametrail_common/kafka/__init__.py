"""The one way services build Kafka producers, consumers and group-less readers (aiokafka)."""

from blametrail_common.kafka.consumer import BatchHandler, consume, create_consumer, run_batches
from blametrail_common.kafka.dlq import DLQ_HEADERS, publish_to_dlq
from blametrail_common.kafka.producer import EventProducer, create_producer
from blametrail_common.kafka.reader import Reader, open_reader

__all__ = [
    "DLQ_HEADERS",
    "BatchHandler",
    "EventProducer",
    "Reader",
    "consume",
    "create_consumer",
    "create_producer",
    "open_reader",
    "publish_to_dlq",
    "run_batches",
]
