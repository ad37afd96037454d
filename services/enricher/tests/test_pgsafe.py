import math

from blametrail_enricher.pgsafe import pg_json, pg_text


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
