"""build_record on the fixture responses, on hostile shapes, and under the size bound."""

from datetime import UTC, datetime

import orjson
from blametrail_common.events import decode, encode, new_event
from blametrail_common.testing import fixture_bytes
from blametrail_enricher.records import IncidentRef, Limits, build_record

REF = IncidentRef("inc-1", "tenant-1", "conn-1", "5912345678")
NOW = datetime(2026, 3, 14, 9, 30, tzinfo=UTC)
EVENT = orjson.loads(fixture_bytes("api/issue-latest-event.response.json"))
TAGS = orjson.loads(fixture_bytes("api/issue-tags.response.json"))


def test_fixture_event_gives_every_part_of_the_record() -> None:
    r = build_record(REF, EVENT, TAGS, NOW)
    assert r.sentry_event_id == "9f2c1d7e4b8a4c6e8d0f1a2b3c4d5e6f"
    assert r.title == "KeyError: 'currency'"
    assert r.environment == "production"
    assert r.release is not None
    assert r.release.version == "checkout-api@2.14.0"
    assert r.release.last_deploy_finished == "2026-03-14T08:58:40Z"
    (exc,) = r.exceptions
    assert (exc.type, exc.value, exc.mechanism, exc.handled) == (
        "KeyError",
        "'currency'",
        "flask",
        False,
    )
    crashing = exc.frames[-1]
    assert (crashing.filename, crashing.function, crashing.line_no, crashing.in_app) == (
        "checkout/pricing.py",
        "compute_total",
        42,
        True,
    )
    assert (42, "    rate = RATES[cart.meta['currency']]") in crashing.context
    assert r.breadcrumbs
    assert r.breadcrumbs[0].category == "httplib"
    assert r.user is not None
    assert r.user.email == "zo\u00eb@customer.example"
    assert r.contexts["runtime"]["name"] == "CPython"
    assert {t.key for t in r.tags} >= {"environment", "release"}
    env = next(t for t in r.tags if t.key == "environment")
    assert env.top_values[0].value == "production"
    assert env.top_values[0].count == 50
    assert ("release", "checkout-api@2.14.0") in r.event_tags
    assert r.links["request_url"].startswith("https://")
    assert r.truncated == []


def test_record_is_deterministic_and_round_trips_the_codec() -> None:
    a, b = build_record(REF, EVENT, TAGS, NOW), build_record(REF, EVENT, TAGS, NOW)
    assert a == b
    env = new_event(a, key=REF.incident_id)
    assert decode(encode(env)).payload == a


def test_hostile_shapes_never_raise() -> None:
    weird = {
        "entries": [
            None,
            {
                "type": "exception",
                "data": {
                    "values": [
                        {
                            "stacktrace": {
                                "frames": [None, {"context": [[1], "x", [2, None]], "lineNo": "7"}]
                            }
                        }
                    ]
                },
            },
            {"type": "breadcrumbs", "data": None},
        ],
        "tags": [None, {"key": "k"}],
        "user": "nobody",
        "contexts": {"os": None},
        "release": 5,
    }
    r = build_record(REF, weird, [None, {"topValues": [None]}], NOW)  # type: ignore[list-item]
    assert r.exceptions[0].frames[0].line_no is None
    assert r.exceptions[0].frames[0].context == [(2, "")]
    assert r.user is None
    assert r.release is None
    assert r.contexts == {}
    assert build_record(REF, {}, [], NOW).exceptions == []


def test_breadcrumbs_keep_the_most_recent_and_say_so() -> None:
    crumbs = [{"message": f"m{i}", "timestamp": str(i)} for i in range(100)]
    event = {**EVENT, "entries": [{"type": "breadcrumbs", "data": {"values": crumbs}}]}
    r = build_record(REF, event, [], NOW, Limits(breadcrumbs=10))
    assert [b.message for b in r.breadcrumbs] == [f"m{i}" for i in range(90, 100)]
    assert "breadcrumbs:100->10" in r.truncated


def test_a_huge_event_is_truncated_with_a_marker_never_dropped() -> None:
    frames = [
        {
            "filename": f"f{i}.py",
            "function": "x" * 3000,
            "lineNo": i,
            "inApp": True,
            "context": [[i, "y" * 3000]] * 9,
        }
        for i in range(400)
    ]
    crumbs = [{"message": "z" * 3000, "data": {"blob": "w" * 5000}} for _ in range(300)]
    event = {
        "eventID": "e",
        "entries": [
            {
                "type": "exception",
                "data": {"values": [{"type": "Boom", "stacktrace": {"frames": frames}}]},
            },
            {"type": "breadcrumbs", "data": {"values": crumbs}},
        ],
    }
    limits = Limits(max_bytes=64 * 1024)
    r = build_record(REF, event, TAGS, NOW, limits)
    assert len(encode(new_event(r, key="k"))) <= limits.max_bytes
    assert r.exceptions[0].type == "Boom"
    assert r.exceptions[0].frames[-1].filename == "f399.py"  # the crashing frame survives
    assert "frames:400->50" in r.truncated
    assert "breadcrumb_data" in r.truncated
    assert all(len(f.function or "") <= 2048 + len("…[truncated]") for f in r.exceptions[0].frames)


BIG = "v" * 2_000_000  # Sentry's answers are read up to 16 MiB


def _size_of(r: object) -> int:
    return len(encode(new_event(r, key="k")))  # type: ignore[arg-type]


def test_every_text_of_sentry_is_bounded_release_links_and_tag_names_too() -> None:
    event = {
        "eventID": "e",
        "web_url": BIG,
        "permalink": BIG,
        "release": {"version": BIG, "ref": BIG, "dateReleased": {"not": "a string"}},
        "tags": [{"key": BIG, "value": "x"}],
        "entries": [{"type": "request", "data": {"url": BIG}}],
    }
    r = build_record(REF, event, [{"key": BIG, "name": BIG, "totalValues": 1}], NOW)
    assert _size_of(r) <= Limits().max_bytes
    assert r.truncated == []  # bounded one by one, nothing had to be shed
    assert r.release is not None
    assert len(r.release.version) <= 2048 + len("…[truncated]")
    assert r.release.date_released == "{'not': 'a string'}"  # a text, not a refused record
    assert all(len(v) <= 2048 + len("…[truncated]") for v in r.links.values())
    assert len(r.tags[0].key) <= 2048 + len("…[truncated]")
    assert len(r.event_tags[0][0]) <= 2048 + len("…[truncated]")


def test_objects_nested_past_what_json_writers_take_are_cut_not_a_failure() -> None:
    deep = orjson.loads('{"a":' * 600 + "1" + "}" * 600)  # pydantic writes ~250 deep at most
    event = {
        "eventID": "e",
        "contexts": {"app": deep},
        "user": {"id": "1", "geo": deep},
        "entries": [{"type": "breadcrumbs", "data": {"values": [{"message": "m", "data": deep}]}}],
    }
    r = build_record(REF, event, TAGS, NOW, Limits(nesting=3))
    assert r.contexts["app"] == {"a": {"a": {"a": "…[nested too deep]"}}}
    assert r.user is not None
    assert r.user.geo == {"a": {"a": {"a": "…[nested too deep]"}}}
    assert r.breadcrumbs[0].data == {"a": {"a": {"a": "…[nested too deep]"}}}
    assert decode(encode(new_event(r, key="k"))).payload == r
    assert build_record(REF, {"contexts": {"app": {"a": [1, {"b": 2}]}}}, [], NOW).contexts == {
        "app": {"a": [1, {"b": 2}]}
    }


def test_many_small_parts_past_the_bound_keep_the_crashing_exception_then_only_the_identity() -> (
    None
):
    frame = {"filename": "f" * 3000, "absPath": "a" * 3000, "module": "m" * 3000}
    many = [
        {"type": f"E{i}", "value": "x" * 2000, "stacktrace": {"frames": [frame] * 9}}
        for i in range(300)
    ]
    event = {
        "eventID": "e",
        "title": "t" * 3000,
        "entries": [{"type": "exception", "data": {"values": many}}],
        "tags": [{"key": f"k{i}", "value": "v" * 2000} for i in range(300)],
    }
    r = build_record(REF, event, TAGS, NOW, Limits(max_bytes=64 * 1024))
    assert _size_of(r) <= 64 * 1024
    assert r.truncated[-1] == "exceptions"
    assert [e.type for e in r.exceptions] == ["E299"]  # the last one: the one that crashed
    small = build_record(REF, event, TAGS, NOW, Limits(max_bytes=12 * 1024))
    assert _size_of(small) <= 12 * 1024
    assert small.truncated[-1] == "everything"
    assert (small.sentry_event_id, small.exceptions, small.tags) == ("e", [], [])
    assert small.title is not None
    assert small.title.startswith("ttt")


def test_the_markers_of_what_was_cut_are_bounded_in_number_too() -> None:
    crowded = {"type": "E", "stacktrace": {"frames": [{}] * 60}}  # 60 frames, past the 50 kept
    event = {"entries": [{"type": "exception", "data": {"values": [crowded] * 100}}]}
    r = build_record(REF, event, TAGS, NOW)
    assert r.truncated[:20] == ["frames:60->50"] * 20
    assert r.truncated[20:21] == ["markers:100->20"]
    assert _size_of(r) <= Limits().max_bytes
