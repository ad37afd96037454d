"""Versioned event models and the common codec."""

from blametrail_common.events.controlplane import (
    ConnectionStateV1,
    MappingStateV1,
    ServiceStateV1,
    mapping_key,
)
from blametrail_common.events.envelope import (
    DecodeError,
    Envelope,
    EventPayload,
    UnknownEventType,
    UnknownEventVersion,
    decode,
    encode,
    event_type,
    new_event,
    registered_events,
)
from blametrail_common.events.raw import WebhookReceivedV1, body_sha256

__all__ = [
    "ConnectionStateV1",
    "DecodeError",
    "Envelope",
    "EventPayload",
    "MappingStateV1",
    "ServiceStateV1",
    "UnknownEventType",
    "UnknownEventVersion",
    "WebhookReceivedV1",
    "body_sha256",
    "decode",
    "encode",
    "event_type",
    "mapping_key",
    "new_event",
    "registered_events",
]
