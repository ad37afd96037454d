"""``jsontext.loads`` is ``json.loads``: the same value, or the same exception, whatever the text
(it reads by orjson only where orjson agrees)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from blametrail_common import jsontext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)  # past 64 bits: orjson reads floats
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
_tweaks = st.sampled_from(
    ["", "\\ud800", "\ud800", "NaN", "-Infinity", "1e400", "\ufeff", "\x00", "}", " ", "[" * 600]
)


def _outcome(loads: Any, text: str) -> tuple[str, Any]:
    try:
        return "ok", loads(text)
    except (ValueError, RecursionError) as exc:
        return "error", (type(exc), str(exc))


def _same(a: Any, b: Any) -> bool:
    """Equal, types and all (an integer is not its float); NaN equals NaN. A loop, not
    recursion: the values may nest deeper than the test's stack allows."""
    pairs = [(a, b)]
    while pairs:
        x, y = pairs.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, float):
            if not (x == y or (math.isnan(x) and math.isnan(y))):
                return False
        elif isinstance(x, list):
            if len(x) != len(y):
                return False
            pairs += zip(x, y, strict=True)
        elif isinstance(x, dict):
            if list(x) != list(y):
                return False
            pairs += ((x[k], y[k]) for k in x)
        elif x != y:
            return False
    return True


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(value=_values, ensure_ascii=st.booleans(), tweak=_tweaks, at=st.integers(0, 200))
def test_loads_is_json_loads(value: Any, ensure_ascii: bool, tweak: str, at: int) -> None:
    text = json.dumps(value, ensure_ascii=ensure_ascii)
    for candidate in (text, text[:at] + tweak + text[at:]):
        ours, theirs = _outcome(jsontext.loads, candidate), _outcome(json.loads, candidate)
        assert ours[0] == theirs[0], (candidate, ours, theirs)
        assert _same(ours[1], theirs[1]) if ours[0] == "ok" else ours[1] == theirs[1]


@pytest.mark.parametrize(
    ("text", "agrees"),
    [
        ('{"count": 123456789012345678901234567890}', False),  # orjson: 1.2345678901234568e+29
        ('{"n": -9223372036854775809}', False),  # 19 digits, below -2**63: orjson reads a float
        ('{"a":' * 600 + "1" + "}" * 600, False),  # orjson nests it; Python's parser may not
        ('{"a": NaN, "b": 1e400}', True),  # orjson refuses these, so json reads them
        ('{"title": "\\ud800"}', True),  # a lone surrogate's escape: the same
    ],
)
def test_where_orjson_reads_otherwise_json_decides(text: str, agrees: bool) -> None:
    assert jsontext.orjson_agrees(text.encode()) is agrees
    ours, theirs = _outcome(jsontext.loads, text), _outcome(json.loads, text)
    assert ours[0] == theirs[0]
    assert _same(ours[1], theirs[1]) if ours[0] == "ok" else ours[1] == theirs[1]


def test_plain_sentry_bodies_take_orjson() -> None:
    from blametrail_common.testing import signed_fixture

    for name in ("issue.created", "issue.resolved", "metric_alert.critical"):
        assert jsontext.orjson_agrees(signed_fixture(name)[0])
