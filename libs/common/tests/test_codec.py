import uuid
from datetime import UTC, datetime

import pytest
from blametrail_common.events import (
    DecodeError,
    EventPayload,
    UnknownEventType,
    UnknownEventVersion,
    decode,
    encode,
    event_type,
    new_event,
)


@event_type("test.thing.happened", 1)
class ThingHappenedV1(EventPayload):
    name: str
    count: int


def _event() -> object:
    return new_event(
        ThingHappenedV1(name="caf\u00e9 \u0000", count=3),
        key="k-1",
        tenant="acme",
        occurred_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        event_id=uuid.UUID(int=7),
        produced_at=datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC),
    )


def test_round_trip_keeps_every_field() -> None:
    event = _event()
    back = decode(encode(event))  # type: ignore[arg-type]
    assert back == event
    assert isinstance(back.payload, ThingHappenedV1)
    assert back.payload.name == "caf\u00e9 \u0000"


def test_encoding_is_deterministic() -> None:
    assert encode(_event()) == encode(_event())  # type: ignore[arg-type]


def test_unknown_version_is_refused_clearly() -> None:
    data = encode(_event()).replace(b'"version":1', b'"version":2')  # type: ignore[arg-type]
    with pytest.raises(UnknownEventVersion, match=r"'test.thing.happened' version 2 .*knows \[1\]"):
        decode(data)


def test_unknown_type_is_refused_clearly() -> None:
    data = encode(_event()).replace(b"test.thing.happened", b"test.other")  # type: ignore[arg-type]
    with pytest.raises(UnknownEventType, match=r"'test\.other' is unknown"):
        decode(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe garbage", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"type": "test.thing.happened"}', "lacks a string 'type' and an integer 'version'"),
    ],
)
def test_garbage_bytes_raise_decode_error(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(data)


def test_payload_failing_its_schema_is_a_decode_error() -> None:
    data = encode(_event()).replace(b'"count":3', b'"count":"three"')  # type: ignore[arg-type]
    with pytest.raises(DecodeError, match="fails its schema"):
        decode(data)


def test_registering_two_models_under_one_name_fails() -> None:
    with pytest.raises(ValueError, match="registered twice"):

        @event_type("test.thing.happened", 1)
        class Other(EventPayload):
            pass
