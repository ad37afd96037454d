"""The agent's handler for ``sentry-observations``: decode -> :func:`fold_observation` -> send.

The same contract as the raw agent (``app._handle``): outputs are durable (acked by the broker)
before the observation is acked; undecodable input goes to ``sentry-observations-dlq``; any other
failure crashes the worker without acking, so the observation is redelivered, never skipped.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from blametrail_common.events import DecodeError, decode
from blametrail_common.events.observations import IssueObservedV1
from blametrail_common.kafka import publish_to_dlq
from prometheus_client import Counter

from blametrail_normalizer.observations import fold_observation

if TYPE_CHECKING:
    from blametrail_normalizer.app import Normalizer

__all__ = ["OBSERVATIONS", "handle_observation"]

log = logging.getLogger(__name__)
OBSERVATIONS = Counter(
    "blametrail_normalizer_observations_total", "Reconciler observations folded", ["outcome"]
)


async def handle_observation(n: Normalizer, message: Any) -> None:
    await n.lookup.cp.ready.wait()
    try:
        env = decode(message.value)
        if not isinstance(env.payload, IssueObservedV1):
            raise DecodeError(f"expected an issue observation, got {env.type}")
    except DecodeError as exc:
        OBSERVATIONS.labels("dead_letter").inc()
        await publish_to_dlq(n.producer, "sentry-observations-dlq", message, str(exc), exc)
        return
    try:
        out = fold_observation(env, n.lookup)
        for topic, event in out.events:
            await n.producer.send(topic, event)
    except Exception as exc:
        log.exception("observation not folded; crashing without ack so it is redelivered")
        await n.app.crash(exc)
        raise
    for incident_id in out.opened:
        n.lookup.incidents[incident_id] = True
    OBSERVATIONS.labels(
        "audited" if out.events and out.events[0][0] == "webhook-audit" else "incident"
    ).inc()
