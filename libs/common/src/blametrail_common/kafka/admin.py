"""Creating and reconciling topics from the registry (``blametrail topics ensure``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    CoordinatorLoadInProgressError,
    GroupCoordinatorNotAvailableError,
    NotCoordinatorError,
)
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from blametrail_common.settings import KafkaSettings
from blametrail_common.topics import TOPICS, TopicSpec, topic_name

__all__ = [
    "TopicChange",
    "admin_client",
    "committed_offsets",
    "describe_topic_configs",
    "ensure_topics",
    "topic_partitions",
]


@dataclass(frozen=True, slots=True)
class TopicChange:
    topic: str
    action: str  # "created" | "altered" | "partitions" | "unchanged"
    detail: str = ""


def admin_client(settings: KafkaSettings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-admin",
        request_timeout_ms=max(settings.request_timeout_ms, 15000),
    )


async def committed_offsets(
    admin: AIOKafkaAdminClient,
    group: str,
    partitions: list[TopicPartition] | None = None,
    timeout_s: float = 30.0,
) -> dict[TopicPartition, OffsetAndMetadata]:
    """A group's committed offsets, waiting out a coordinator that is not there yet: on a new
    cluster the first lookup is what creates ``__consumer_offsets``, and until its partitions
    have leaders the broker answers "coordinator not available"."""
    loop = asyncio.get_running_loop()
    deadline, delay = loop.time() + timeout_s, 0.1
    while True:
        try:
            found: dict[
                TopicPartition, OffsetAndMetadata
            ] = await admin.list_consumer_group_offsets(group, partitions=partitions)
            return found
        except (
            GroupCoordinatorNotAvailableError,
            CoordinatorLoadInProgressError,
            NotCoordinatorError,
        ):
            if loop.time() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def describe_topic_configs(
    admin: AIOKafkaAdminClient, names: list[str]
) -> dict[str, dict[str, str]]:
    """Current (non-default and default) config of each topic, as the broker reports it."""
    resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
    out: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(resources):
        for resource in response.resources:
            _err, _msg, _type, name, entries = resource[:5]
            out[name] = {e[0]: e[1] for e in entries}
    return out


async def topic_partitions(settings: KafkaSettings, topics: Iterable[str]) -> list[TopicPartition]:
    """Every partition of the registry ``topics``, as the broker describes them, in topic and
    partition order. Raises :class:`LookupError` naming a topic that does not exist."""
    names = [topic_name(t, settings.topic_prefix) for t in topics]
    admin = admin_client(settings)
    await admin.start()
    try:
        described = {d["topic"]: d for d in await admin.describe_topics(names)}
    finally:
        await admin.close()
    out: list[TopicPartition] = []
    for name in names:
        parts = described.get(name, {}).get("partitions") or []
        if not parts:
            raise LookupError(f"topic {name} does not exist (run `blametrail topics ensure`)")
        out.extend(
            TopicPartition(name, p["partition"])
            for p in sorted(parts, key=lambda p: p["partition"])
        )
    return out


async def ensure_topics(
    settings: KafkaSettings, specs: tuple[TopicSpec, ...] = TOPICS
) -> list[TopicChange]:
    """Create missing topics, align configs and raise partition counts; idempotent.

    Partition counts are never lowered (Kafka cannot), and a drift in them is reported.
    """
    admin = admin_client(settings)
    await admin.start()
    try:
        return await _ensure(admin, settings.topic_prefix, specs)
    finally:
        await admin.close()


async def _ensure(
    admin: AIOKafkaAdminClient, prefix: str, specs: tuple[TopicSpec, ...]
) -> list[TopicChange]:
    wanted = {prefix + s.name: s for s in specs}
    existing = set(await admin.list_topics())
    missing = [n for n in wanted if n not in existing]
    changes = [TopicChange(n, "created") for n in missing]
    if missing:
        response = await admin.create_topics(
            [
                NewTopic(
                    n,
                    wanted[n].partitions,
                    wanted[n].replication_factor,
                    topic_configs=wanted[n].config(),
                )
                for n in missing
            ]
        )
        _raise_errors(response.topic_errors)
        await _wait_visible(admin, missing)
    present = [n for n in wanted if n in existing]
    if not present:
        return changes
    configs = await describe_topic_configs(admin, present)
    counts = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(present)}
    for name in present:
        changes.append(await _reconcile(admin, name, wanted[name], configs.get(name, {}), counts))
    return changes


_TOPIC_ALREADY_EXISTS = 36


async def _wait_visible(
    admin: AIOKafkaAdminClient, names: list[str], timeout_s: float = 30
) -> None:
    """Creation is asynchronous in KRaft: return once every topic has partitions in metadata."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        described = await admin.describe_topics(names)
        if all(t["error_code"] == 0 and t["partitions"] for t in described):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"topics not visible in metadata after {timeout_s}s: {names}")
        await asyncio.sleep(0.1)


def _raise_errors(topic_errors: list[tuple[Any, ...]]) -> None:
    failed = [(t[0], t[1], t[2] if len(t) > 2 else "") for t in topic_errors]
    failed = [f for f in failed if f[1] not in (0, _TOPIC_ALREADY_EXISTS)]
    if failed:
        raise RuntimeError(
            "; ".join(f"{n}: error {code} {msg or ''}".strip() for n, code, msg in failed)
        )


async def _reconcile(
    admin: AIOKafkaAdminClient,
    name: str,
    spec: TopicSpec,
    current: dict[str, str],
    counts: dict[str, Any],
) -> TopicChange:
    drift = {k: v for k, v in spec.config().items() if current.get(k) != v}
    details = []
    if drift:
        # AlterConfigs replaces the topic's whole dynamic config, so send the full wanted set.
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, spec.config())])
        details.append("config " + ", ".join(f"{k}={v}" for k, v in sorted(drift.items())))
    have = counts.get(name, spec.partitions)
    if have < spec.partitions:
        await admin.create_partitions({name: NewPartitions(spec.partitions)})
        details.append(f"partitions {have} -> {spec.partitions}")
    elif have > spec.partitions:
        details.append(f"has {have} partitions, registry says {spec.partitions} (not lowered)")
    if not details:
        return TopicChange(name, "unchanged")
    return TopicChange(name, "altered", "; ".join(details))
