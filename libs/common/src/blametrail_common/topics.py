"""The topic registry: every Kafka topic the system uses, declared once, as data.

Services never spell a topic name; they ask :func:`topic_name` (which applies the optional
``BLAMETRAIL_TOPIC_PREFIX``, used to isolate environments and test sessions on one cluster).
``blametrail topics ensure`` creates or updates every topic here, and the Strimzi manifests are
generated from this table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["TOPICS", "TopicSpec", "get_topic", "topic_name"]

DAY_MS = 24 * 60 * 60 * 1000
FOREVER = -1


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic: its logical name, what its key is, and how the broker keeps it."""

    name: str
    key: str
    description: str
    partitions: int
    cleanup_policy: Literal["delete", "compact"]
    retention_ms: int = FOREVER
    replication_factor: int = 1
    producers: tuple[str, ...] = ()
    consumers: tuple[str, ...] = ()
    extra_config: dict[str, str] = field(default_factory=dict)

    def config(self) -> dict[str, str]:
        """Topic-level broker configuration for this spec."""
        cfg = {"cleanup.policy": self.cleanup_policy, **self.extra_config}
        if self.cleanup_policy == "delete":
            cfg["retention.ms"] = str(self.retention_ms)
        else:
            # Compacted topics are key -> latest tables; tombstones kept a day for slow readers.
            cfg["min.compaction.lag.ms"] = "0"
            cfg["delete.retention.ms"] = str(DAY_MS)
            cfg["segment.ms"] = str(DAY_MS)
        return cfg


def _dlq(of: TopicSpec, consumers: tuple[str, ...]) -> TopicSpec:
    return TopicSpec(
        name=f"{of.name}-dlq",
        key=of.key,
        description=f"Dead letters of {of.name}: original bytes, failure reason in headers.",
        partitions=1,
        cleanup_policy="delete",
        retention_ms=FOREVER,
        producers=of.consumers,
        consumers=consumers,
    )


_RAW = TopicSpec(
    name="sentry-webhooks-raw",
    key="Sentry issue id (installation uuid for installation events; request hash otherwise)",
    description="Every verified Sentry webhook, body bytes untouched, with headers and receive time.",
    partitions=6,
    cleanup_policy="delete",
    retention_ms=FOREVER,  # the source of truth for reprocessing
    producers=("ingest",),
    consumers=("normalizer",),
)
_INCIDENTS = TopicSpec(
    name="incident-events",
    key="incident id (UUIDv5, deterministic)",
    description="Incident lifecycle events: opened, updated, resolved, reopened, assigned, muted.",
    partitions=6,
    cleanup_policy="delete",
    retention_ms=FOREVER,  # projections are rebuilt from offset zero
    producers=("normalizer", "mappings-api"),  # the API: incidents created from Sentry's issue link
    consumers=("enricher", "projection", "suspects", "sync"),
)
_PARKED = TopicSpec(
    name="incident-events-parked",
    key="incident event id",
    description=(
        "Incident events whose enrichment waits for Sentry to answer again (the event's bytes,"
        " retry state in headers); latest per key, tombstone once enriched or failed for good."
    ),
    partitions=3,
    cleanup_policy="compact",
    producers=("enricher",),
    consumers=("enricher",),  # every replica reads it whole; each retries its own partitions'
)
_ENRICHMENTS = TopicSpec(
    name="incident-enrichments",
    key="incident id",
    description="Sentry API context fetched for an incident (or why it could not be).",
    partitions=6,
    cleanup_policy="delete",
    retention_ms=FOREVER,
    producers=("enricher",),
    consumers=("projection", "suspects"),
)
_AUDIT = TopicSpec(
    name="webhook-audit",
    key="tenant id (connection id when the tenant is unknown)",
    description="Webhooks received but not turned into incidents, and why (unmapped, inactive...).",
    partitions=3,
    cleanup_policy="delete",
    retention_ms=FOREVER,
    producers=("ingest", "normalizer"),
    consumers=("projection",),
)
_SUSPECTS = TopicSpec(
    name="incident-suspects",
    key="incident id",
    description="Ranked suspect deploys of an incident with each signal's contribution; latest per key.",
    partitions=6,
    cleanup_policy="compact",
    producers=("suspects",),
    consumers=("projection",),
)
_DEPLOYS = TopicSpec(
    name="deploys",
    key="deploy id",
    description="Deploys of services (recorded through the API or imported from Sentry); latest per key.",
    partitions=3,
    cleanup_policy="compact",
    producers=("mappings-api", "suspects"),  # suspects: releases Sentry reported, unknown here
    consumers=("suspects", "mappings-api"),
)
_INSTALLATIONS = TopicSpec(
    name="sentry-installations",
    key="installation uuid",
    description=(
        "Installation webhooks of the public app (created with its grant code, deleted); the"
        " installations internal connections' webhooks name (installation_seen)."
    ),
    partitions=1,
    cleanup_policy="delete",
    retention_ms=7 * DAY_MS,  # a grant lives ten minutes; a week is for investigations
    producers=("normalizer",),
    consumers=("mappings-api",),
)
_REFRESH_REQUESTS = TopicSpec(
    name="oauth-refresh-requests",
    key="connection id",
    description="Early token refresh requests from readers whose token Sentry rejected.",
    partitions=1,
    cleanup_policy="delete",
    retention_ms=DAY_MS,
    producers=("enricher",),
    consumers=("mappings-api",),
)
_SERVICES = TopicSpec(
    name="cp-services",
    key="service id",
    description="Control-plane services, latest state per key; tombstone on delete.",
    partitions=1,
    cleanup_policy="compact",
    producers=("mappings-api",),
    consumers=("normalizer",),
)
_CONNECTIONS = TopicSpec(
    name="cp-connections",
    key="connection id",
    description="Sentry connections with their secrets encrypted; latest state per key.",
    partitions=1,
    cleanup_policy="compact",
    producers=("mappings-api",),
    consumers=("ingest", "normalizer", "enricher", "sync"),
)
_MAPPINGS = TopicSpec(
    name="cp-mappings",
    key="connection id + ':' + Sentry project slug",
    description="Project mappings, latest state per key; tombstone on delete.",
    partitions=1,
    cleanup_policy="compact",
    producers=("mappings-api",),
    consumers=("normalizer",),
)

_COMMANDS = TopicSpec(
    name="incident-commands",
    key="incident id",
    description="Incident actions accepted by the API (acknowledge, resolve, reopen, assign), folded"
    " by the normalizer into incident events.",
    partitions=6,
    cleanup_policy="delete",
    retention_ms=FOREVER,  # the source of truth of BlameTrail's own actions
    producers=("mappings-api",),
    consumers=("normalizer",),
)
_WRITEBACKS = TopicSpec(
    name="incident-writebacks",
    key="incident id",
    description="Write-backs of incident states to Sentry: requested, confirmed, refused, failed,"
    " echoed (Sentry's webhook for our own change). Timeline only, never a state change.",
    partitions=6,
    cleanup_policy="delete",
    retention_ms=FOREVER,
    producers=("sync", "normalizer"),
    consumers=("projection", "normalizer"),  # the normalizer recognises echoes with it
)

_OBSERVATIONS = TopicSpec(
    name="sentry-observations",
    key="connection id + ':' + the Sentry issue id asked about",
    description="What the reconciler's sweeps saw in Sentry that the read model did not show (a"
    " missed resolve/unresolve/ignore, a missed creation, a merge); folded by the normalizer like"
    " the webhook Sentry would have sent.",
    partitions=3,
    cleanup_policy="delete",
    retention_ms=FOREVER,  # a source of incident events, like the raw webhooks
    producers=("reconciler",),
    consumers=("normalizer",),
)
_ALIASES = TopicSpec(
    name="sentry-issue-aliases",
    key="connection id + ':' + merged-away Sentry issue id",
    description="Merged-away Sentry issue ids and the issue that superseded each; latest per key,"
    " read whole by the normalizer (later news about an old id lands on the primary).",
    partitions=1,
    cleanup_policy="compact",
    producers=("reconciler",),
    consumers=("normalizer",),
)

TOPICS: tuple[TopicSpec, ...] = (
    _RAW,
    _dlq(_RAW, ()),
    _INCIDENTS,
    _dlq(_INCIDENTS, ()),
    _PARKED,
    _ENRICHMENTS,
    _dlq(_ENRICHMENTS, ()),
    _AUDIT,
    _dlq(_AUDIT, ()),
    _SUSPECTS,
    _dlq(_SUSPECTS, ()),
    _DEPLOYS,
    _dlq(_DEPLOYS, ()),
    _INSTALLATIONS,
    _REFRESH_REQUESTS,
    _SERVICES,
    _CONNECTIONS,
    _MAPPINGS,
    _COMMANDS,
    _dlq(_COMMANDS, ()),
    _WRITEBACKS,
    _OBSERVATIONS,
    _dlq(_OBSERVATIONS, ()),
    _ALIASES,
)
_BY_NAME = {t.name: t for t in TOPICS}


def get_topic(name: str) -> TopicSpec:
    """Return the spec of a registered topic; ``KeyError`` names the unknown topic."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(
            f"topic {name!r} is not in the registry (blametrail_common.topics)"
        ) from None


def topic_name(name: str, prefix: str = "") -> str:
    """The broker-side name of a registered topic, with the environment's prefix applied."""
    return prefix + get_topic(name).name
