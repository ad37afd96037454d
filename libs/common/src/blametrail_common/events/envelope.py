"""The event envelope and its codec: the one way every service turns events into bytes and back.

An event is an :class:`Envelope` around a payload model registered with :func:`event_type`
under a ``(type, version)`` pair. Decoding looks the pair up first, so an event of a version this
build does not know is refused with :class:`UnknownEventVersion` rather than half-read.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeVar

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, TypeAdapter, ValidationError

__all__ = [
    "DecodeError",
    "Envelope",
    "EventPayload",
    "UnknownEventType",
    "UnknownEventVersion",
    "decode",
    "encode",
    "event_type",
    "new_event",
    "registered_events",
]


class EventPayload(BaseModel):
    """Base of every payload. Subclasses are registered with :func:`event_type`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    EVENT_TYPE: ClassVar[str]
    EVENT_VERSION: ClassVar[int]


P = TypeVar("P", bound=EventPayload)
PT = TypeVar("PT", bound=type[EventPayload])


class Envelope(BaseModel, Generic[P]):
    """Metadata common to every event, around a typed payload."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: uuid.UUID
    type: str
    version: int
    occurred_at: AwareDatetime
    produced_at: AwareDatetime
    tenant: str | None = None
    key: str
    payload: P


class DecodeError(ValueError):
    """Bytes that are not a valid event: not JSON, not an envelope, or a payload that fails its schema."""


class UnknownEventType(DecodeError):
    """The envelope names an event type this build has never heard of."""


class UnknownEventVersion(DecodeError):
    """The envelope names a known event type at a version this build does not know."""


_PAYLOADS: dict[tuple[str, int], type[EventPayload]] = {}
_ENVELOPES: dict[tuple[str, int], type[Envelope[Any]]] = {}
_ADAPTERS: dict[tuple[str, int], TypeAdapter[Envelope[Any]]] = {}


def event_type(name: str, version: int) -> Callable[[PT], PT]:
    """Class decorator registering a payload model as event ``name`` at ``version``."""

    def register(cls: PT) -> PT:
        key = (name, version)
        if key in _PAYLOADS and _PAYLOADS[key] is not cls:
            raise ValueError(f"event {name} v{version} is registered twice")
        cls.EVENT_TYPE, cls.EVENT_VERSION = name, version
        _PAYLOADS[key] = cls
        _ENVELOPES[key] = Envelope[cls]  # type: ignore[valid-type]
        _ADAPTERS[key] = TypeAdapter(_ENVELOPES[key])
        return cls

    return register


def registered_events() -> dict[tuple[str, int], type[EventPayload]]:
    """Every registered ``(type, version) -> payload model`` (a copy)."""
    return dict(_PAYLOADS)


def new_event(
    payload: P,
    *,
    key: str,
    tenant: str | None = None,
    occurred_at: datetime | None = None,
    event_id: uuid.UUID | None = None,
    produced_at: datetime | None = None,
) -> Envelope[P]:
    """Wrap ``payload`` in an envelope. Pass ``event_id`` when it must be deterministic."""
    now = produced_at or datetime.now(UTC)
    model = _ENVELOPES[(payload.EVENT_TYPE, payload.EVENT_VERSION)]
    return model(
        id=event_id or uuid.uuid4(),
        type=payload.EVENT_TYPE,
        version=payload.EVENT_VERSION,
        occurred_at=occurred_at or now,
        produced_at=now,
        tenant=tenant,
        key=key,
        payload=payload,
    )


def encode(event: Envelope[Any]) -> bytes:
    """Serialize an envelope to compact JSON bytes."""
    return event.__pydantic_serializer__.to_json(event)


# Our encoder writes ``id``, ``type``, ``version`` first: the model can be chosen from the head
# and the bytes validated in one pass (pydantic's JSON parser, ~1.4x orjson + validate_python).
_HEAD = re.compile(rb'"type":"([A-Za-z0-9_.\-]{1,100})","version":([0-9]{1,9})[,}]')


def _decode_by_head(data: bytes) -> Envelope[Any] | None:
    """The fast path of :func:`decode`, or ``None`` (then the full path decides and explains)."""
    head = _HEAD.search(data, 0, 256) if isinstance(data, bytes) else None
    if head is None:
        return None
    name, version = head[1].decode(), int(head[2])
    adapter = _ADAPTERS.get((name, version))
    if adapter is None:
        return None
    try:
        env = adapter.validate_json(data)
    except ValidationError:
        return None
    # The match may have been a nested object's: only the envelope's own type counts.
    return env if (env.type, env.version) == (name, version) else None


def decode(data: bytes) -> Envelope[Any]:
    """Parse bytes into an envelope with its registered payload model.

    Raises :class:`DecodeError` (or a subclass) with a message naming what is wrong; never
    another exception type for bad input.
    """
    fast = _decode_by_head(data)
    if fast is not None:
        return fast
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"event is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"event must be a JSON object, got {type(obj).__name__}")
    name, version = obj.get("type"), obj.get("version")
    if not isinstance(name, str) or not isinstance(version, int):
        raise DecodeError("event envelope lacks a string 'type' and an integer 'version'")
    adapter = _ADAPTERS.get((name, version))
    if adapter is None:
        known = sorted(v for (t, v) in _PAYLOADS if t == name)
        if known:
            raise UnknownEventVersion(
                f"event {name!r} version {version} is unknown to this build (knows {known})"
            )
        raise UnknownEventType(f"event type {name!r} is unknown to this build")
    try:
        return adapter.validate_python(obj)
    except ValidationError as exc:
        raise DecodeError(f"event {name} v{version} fails its schema: {exc}") from None
