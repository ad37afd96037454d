"""The group-less reader against the real broker: every partition, from its first offset, no group."""

import uuid

import pytest
from aiokafka.structs import TopicPartition
from blametrail_common.kafka import EventProducer, create_producer, open_reader
from blametrail_common.settings import KafkaSettings
from blametrail_common.topics import get_topic, topic_name


async def test_reader_starts_every_partition_at_its_first_offset_and_reads_to_the_end(
    kafka_settings: KafkaSettings,
) -> None:
    producer = EventProducer(create_producer(kafka_settings), kafka_settings)
    await producer.start()
    mine = {f"r-{uuid.uuid4().hex[:8]}-{i}".encode() for i in range(6)}
    try:
        for key in sorted(mine):
            await producer.send_raw("webhook-audit", key, b"v")
    finally:
        await producer.stop()

    async with open_reader(kafka_settings, ["webhook-audit"], name="test") as log:
        name = topic_name("webhook-audit", kafka_settings.topic_prefix)
        partitions = get_topic("webhook-audit").partitions
        assert [(tp.topic, tp.partition) for tp in log.partitions] == [
            (name, p) for p in range(partitions)
        ]
        assert log.consumer.assignment() == set(log.partitions)
        assert log.begins == await log.consumer.beginning_offsets(log.partitions)
        for tp in log.partitions:
            assert await log.consumer.position(tp) == log.begins[tp]
        ends = await log.ends()
        seen: list[bytes] = []
        for _ in range(60):
            if all([await log.consumer.position(tp) >= ends[tp] for tp in log.partitions]):
                break
            for records in (await log.consumer.getmany(timeout_ms=500)).values():
                before_end = [
                    r for r in records if r.offset < ends[TopicPartition(r.topic, r.partition)]
                ]
                seen.extend(r.key or b"" for r in before_end)
    assert sorted(k for k in seen if k in mine) == sorted(mine)  # each once, none skipped


async def test_reader_of_a_missing_topic_says_which(kafka_settings: KafkaSettings) -> None:
    elsewhere = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers, topic_prefix=f"none{uuid.uuid4().hex}."
    )
    with pytest.raises(LookupError, match=r"none.*\.webhook-audit does not exist"):
        async with open_reader(elsewhere, ["webhook-audit"]):
            pass
