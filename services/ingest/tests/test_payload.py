"""The JSON fast path (orjson) never accepts what the standard parser refuses, and agrees with it
on what both accept; the hazards of the standard parser are refused with a clear reason."""

from __future__ import annotations

import json
import math

import pytest
from blametrail_common.testing import signed_fixture
from blametrail_ingest import payload
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)  # past 64 bits: orjson refuses those
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_tweaks = st.sampled_from(
    [b"", b"\\ud800", b"NaN", b"Infinity", b"1e400", b"\xef\xbb\xbf", b"\xff", b"\x00", b"}", b" "]
)


def _outcome(parse: object, body: bytes) -> object:
    try:
        return ("ok", parse(body))  # type: ignore[operator]
    except payload.BadPayload as exc:
        return ("bad", str(exc))


def _same(a: object, b: object) -> bool:
    """Equality where NaN equals NaN (floats past the double range parse to inf, not NaN)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=st.dictionaries(st.text(max_size=8), _json_values, max_size=5),
    ensure_ascii=st.booleans(),
    tweak=_tweaks,
    at=st.integers(min_value=0, max_value=200),
)
def test_fast_path_agrees_with_the_standard_parser(
    doc: dict[str, object], ensure_ascii: bool, tweak: bytes, at: int
) -> None:
    body = json.dumps(doc, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
    for candidate in (body, body[:at] + tweak + body[at:]):
        fast, std = _outcome(payload.parse, candidate), _outcome(payload.parse_std, candidate)
        assert fast[0] == std[0], (candidate, fast, std)
        if fast[0] == "ok":
            assert _same(fast[1], std[1]) or json.dumps(fast[1]) == json.dumps(std[1])


@settings(max_examples=300)
@given(body=st.binary(max_size=200))
def test_fast_path_agrees_on_any_bytes(body: bytes) -> None:
    fast, std = _outcome(payload.parse, body), _outcome(payload.parse_std, body)
    assert fast[0] == std[0]
    if fast[0] == "ok":
        assert json.dumps(fast[1]) == json.dumps(std[1])


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty body"),
        (b'{"a": NaN}', "non-finite number NaN"),
        (b'{"a": -Infinity}', "non-finite number -Infinity"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"a":' * 1000 + b"1" + b"}" * 1000, "nested too deeply"),  # orjson would take it
        (b'{"a": ' + b"9" * 5000 + b"}", "invalid JSON"),
        (b"\xff{}", "not valid UTF-8"),
        (b"[1, 2]", "must be a JSON object"),
    ],
)
def test_hazards_are_refused_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(payload.BadPayload, match=reason):
        payload.parse(body)


def test_lone_surrogates_and_big_integers_are_accepted_as_sentry_sends_them() -> None:
    assert payload.parse(b'{"a": "\\ud800", "n": ' + b"9" * 30 + b"}") == {
        "a": "\ud800",
        "n": int("9" * 30),
    }
    body, _ = signed_fixture("issue.created")
    assert payload.parse(body) == json.loads(body)
