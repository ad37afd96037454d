import math

import orjson
import pytest
from blametrail_common.events.incidents import IssueSnapshot
from blametrail_projector.pgsafe import pg_json, pg_jsonb, pg_jsonb_model, pg_text


def test_text_loses_nul_and_lone_surrogates_only() -> None:
    assert pg_text("a\x00b\ud800c\udfffd") == "a\ufffdb\ufffdc\ufffdd"
    assert pg_text("caf\u00e9 \U0001f600") == "caf\u00e9 \U0001f600"
    assert pg_text(None) is None


def test_json_is_cleaned_recursively_and_reports_it() -> None:
    value = {"k\x00": [1, math.nan, {"x": "\ud83d"}, math.inf], "ok": 10**40}
    cleaned, changed = pg_json(value)
    assert changed
    assert cleaned == {"k\ufffd": [1, None, {"x": "\ufffd"}, None], "ok": 10**40}
    assert pg_json({"a": ["b", 1.5]}) == ({"a": ["b", 1.5]}, False)


def test_jsonb_encoding_is_the_cleaned_value_in_one_pass() -> None:
    poison = {"k\x00": ["\ud83d", "a\x00"], "ok": 10**40}
    encoded, changed = pg_jsonb(poison)
    assert changed
    assert orjson.loads(encoded.decode().replace("1" + "0" * 40, "0")) == {
        "k\ufffd": ["\ufffd", "a\ufffd"],
        "ok": 0,
    }
    assert b"\\u0000" not in encoded
    assert pg_jsonb({"a": ["b", 1.5, None]}) == (b'{"a":["b",1.5,null]}', False)
    for clean in ({"t": "caf\u00e9 \U0001f600"}, [1, 2, {"x": None}], "s"):
        encoded, changed = pg_jsonb(clean)
        assert (orjson.loads(encoded), changed) == (clean, False)


@pytest.mark.parametrize(
    "title", ["plain", "nul \x00 inside", "lone \ud800 surrogate", "é", "\\u0000"]
)
def test_a_model_encoded_in_one_pass_is_what_the_cleaning_path_gives(title: str) -> None:
    """``pg_jsonb_model`` (pydantic's JSON writer) and ``pg_jsonb`` of the dumped model agree
    on the JSON value and on whether anything was cleaned."""
    model = IssueSnapshot(title=title, culprit=None, count=2**40)
    fast, fast_changed = pg_jsonb_model(model, exclude_none=True)
    slow, slow_changed = pg_jsonb(model.model_dump(mode="json", exclude_none=True))
    assert orjson.loads(fast) == orjson.loads(slow)
    assert fast_changed == slow_changed == (title not in ("plain", "é", "\\u0000"))
