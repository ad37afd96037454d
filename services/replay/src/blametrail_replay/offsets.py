"""Consumer-group offsets: where each group is, and moving it (``replay status`` / ``replay reset``).

Kafka's admin protocol reads a group's state and committed offsets; a reset commits the new
offsets through the group coordinator (OffsetCommit from outside the group, generation -1), which
the broker accepts only while the group has no live members. Groups whose effects live in
Postgres (the projection: :mod:`blametrail_common.kafka.pgsink`) keep their truth in the
``consumer_offsets`` table; for them the reset writes that table as well, and ``status`` shows it.

Planning is pure (:func:`plan_reset`); reading and writing are the async functions below it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from aiokafka.structs import OffsetAndMetadata, TopicPartition
from blametrail_common.kafka import create_consumer, open_reader
from blametrail_common.kafka.admin import admin_client, committed_offsets
from blametrail_common.settings import KafkaSettings
from blametrail_common.topics import get_topic, topic_name

__all__ = [
    "ALIASES",
    "Earliest",
    "Explicit",
    "GroupInfo",
    "Latest",
    "Move",
    "PartitionOffsets",
    "Target",
    "ToTime",
    "apply_reset",
    "describe_group",
    "list_groups",
    "logical_topic",
    "offsets_at",
    "pg_offsets",
    "plan_reset",
    "read_offsets",
]

ALIASES = {
    "raw": "sentry-webhooks-raw",
    "incidents": "incident-events",
    "enrichments": "incident-enrichments",
    "audit": "webhook-audit",
}


def logical_topic(name: str) -> str:
    """A registry topic name from an operator's spelling (``raw`` -> ``sentry-webhooks-raw``)."""
    return get_topic(ALIASES.get(name, name)).name


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    topic: str
    partition: int
    committed: int | None  # None: the group never committed here
    begin: int
    end: int

    @property
    def lag(self) -> int:
        return self.end - (self.begin if self.committed is None else self.committed)


@dataclass(frozen=True, slots=True)
class Earliest:
    pass


@dataclass(frozen=True, slots=True)
class Latest:
    pass


@dataclass(frozen=True, slots=True)
class ToTime:
    at: datetime


@dataclass(frozen=True, slots=True)
class Explicit:
    offsets: Mapping[int, int]  # partition -> offset


Target = Earliest | Latest | ToTime | Explicit


@dataclass(frozen=True, slots=True)
class Move:
    topic: str
    partition: int
    current: int | None
    target: int


def plan_reset(
    parts: Sequence[PartitionOffsets],
    target: Target,
    times: Mapping[int, int | None] | None = None,
) -> list[Move]:
    """The moves a reset makes. ``times`` (for :class:`ToTime`) is the broker's answer to
    "first offset at or after the time" per partition; ``None`` there means no such record, so
    the group goes to the end. Explicit offsets are clamped into ``[begin, end]``; partitions an
    explicit target does not name are left alone."""
    moves = []
    for p in parts:
        if isinstance(target, Earliest):
            to = p.begin
        elif isinstance(target, Latest):
            to = p.end
        elif isinstance(target, ToTime):
            found = (times or {}).get(p.partition)
            to = p.end if found is None else found
        elif p.partition in target.offsets:
            to = min(max(target.offsets[p.partition], p.begin), p.end)
        else:
            continue
        moves.append(Move(p.topic, p.partition, p.committed, to))
    return moves


@dataclass(frozen=True, slots=True)
class GroupInfo:
    group: str
    state: str  # Empty | Stable | PreparingRebalance | CompletingRebalance | Dead
    members: tuple[str, ...]  # "client_id@host" of each live member

    @property
    def live(self) -> bool:
        return bool(self.members)


async def list_groups(kafka: KafkaSettings) -> list[str]:
    admin = admin_client(kafka)
    await admin.start()
    try:
        return sorted(str(g[0]) for g in await admin.list_consumer_groups())
    finally:
        await admin.close()


async def describe_group(kafka: KafkaSettings, group: str) -> GroupInfo:
    admin = admin_client(kafka)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    described: Any = response.groups[0]
    # DescribeGroups v0-v2: (error, group, state, protocol_type, protocol, members); a member is
    # (member_id, client_id, client_host, metadata, assignment).
    members = tuple(f"{m[1]}@{m[2]}" for m in described[5])
    return GroupInfo(group, str(described[2]), members)


async def read_offsets(
    kafka: KafkaSettings, group: str, topics: Iterable[str], dsn: str | None = None
) -> list[PartitionOffsets]:
    """Committed, first and end offsets of ``group`` on each partition of the registry ``topics``.

    When ``dsn`` is given and the group stores offsets in Postgres, those are the committed ones.
    """
    async with open_reader(kafka, list(topics), name="replay") as log:
        tps, begins, ends = log.partitions, log.begins, await log.ends()
    committed: dict[TopicPartition, int] = {}
    admin = admin_client(kafka)
    await admin.start()
    try:
        for tp, meta in (await committed_offsets(admin, group, tps)).items():
            if meta.offset >= 0:
                committed[tp] = meta.offset
    finally:
        await admin.close()
    if dsn is not None:
        committed.update(await pg_offsets(dsn, group))
    return [
        PartitionOffsets(
            tp.topic.removeprefix(kafka.topic_prefix),
            tp.partition,
            committed.get(tp),
            begins[tp],
            ends[tp],
        )
        for tp in tps
    ]


async def pg_offsets(dsn: str, group: str) -> dict[TopicPartition, int]:
    """Offsets stored in Postgres for ``group`` (empty when it keeps none there)."""
    async with await psycopg.AsyncConnection.connect(dsn, connect_timeout=5) as conn:
        cur = await conn.execute(
            "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = %s",
            (group,),
        )
        return {TopicPartition(t, p): o for t, p, o in await cur.fetchall()}


async def offsets_at(kafka: KafkaSettings, topic: str, at: datetime) -> dict[int, int | None]:
    """First offset at or after ``at`` on each partition of registry ``topic``."""
    async with open_reader(kafka, [topic], name="replay") as log:
        at_ms = int(at.timestamp() * 1000)
        found = await log.consumer.offsets_for_times({tp: at_ms for tp in log.partitions})
    return {tp.partition: (None if ot is None else ot.offset) for tp, ot in found.items()}


async def apply_reset(
    kafka: KafkaSettings, group: str, moves: Sequence[Move], dsn: str | None = None
) -> bool:
    """Commit ``moves`` for ``group`` in Kafka, then in Postgres when the group keeps its offsets
    there (rows exist). The broker refuses while the group has live members. Returns whether
    Postgres was written."""
    if not moves:
        return False
    offsets = {
        TopicPartition(topic_name(m.topic, kafka.topic_prefix), m.partition): OffsetAndMetadata(
            m.target, "reset by blametrail replay"
        )
        for m in moves
    }
    committer = create_consumer(kafka, [], group, client_id=f"{kafka.client_id}-replay")
    await committer.start()
    try:
        committer.assign(list(offsets))
        await committer.commit(offsets)
    finally:
        await committer.stop()
    if dsn is None or not await pg_offsets(dsn, group):
        return False
    async with (
        await psycopg.AsyncConnection.connect(dsn, connect_timeout=5) as conn,
        conn.cursor() as cur,
    ):
        await cur.executemany(
            "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset, updated_at)"
            " VALUES (%s, %s, %s, %s, now()) ON CONFLICT (group_id, topic, partition)"
            " DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()",
            [(group, tp.topic, tp.partition, om.offset) for tp, om in offsets.items()],
        )
    return True
