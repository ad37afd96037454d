"""Ingest against the real broker: what is accepted arrives byte-identical; nothing else arrives."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import httpx
import pytest
from blametrail_common.settings import KafkaSettings
from blametrail_common.signature import sign
from blametrail_common.testing import FIXTURES, TEST_SECRET, signed_fixture
from blametrail_devstack.ingest_testing import RawTopic, make_settings, payload_of, running_ingest


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


SIGNED = sorted(
    p.stem for p in (FIXTURES / "signed").glob("*.body") if not p.stem.startswith("issue-link")
)


async def test_every_signed_fixture_is_published_byte_identical(
    kafka_settings: KafkaSettings, spool_dir: Path
) -> None:
    async with (
        RawTopic(kafka_settings) as raw,
        running_ingest(kafka_settings, make_settings(spool_dir)) as (url, _),
    ):
        async with httpx.AsyncClient(base_url=url) as client:
            for name in SIGNED:
                body, headers = signed_fixture(name)
                resp = await client.post("/webhooks/sentry", content=body, headers=headers)
                assert resp.status_code == 200, (name, resp.text)
                assert resp.json()["queued"] is False
        records = await raw.read(len(SIGNED))
    assert len(records) == len(SIGNED)
    by_request = {payload_of(r).request_id: (r, payload_of(r)) for r in records}
    for name in SIGNED:
        body, headers = signed_fixture(name)
        _record, event = by_request[headers["Request-ID"]]
        assert event.body.encode("utf-8") == body
        assert event.resource == headers["Sentry-Hook-Resource"]
        assert event.supported is True
    issue = by_request[signed_fixture("issue.created")[1]["Request-ID"]][0]
    assert issue.key == b"5912345678"
    alert = by_request[signed_fixture("event_alert.triggered")[1]["Request-ID"]][0]
    assert alert.key == b"5912345678"  # every webhook about one issue shares a partition
    install = by_request[signed_fixture("installation.created")[1]["Request-ID"]][0]
    assert install.key == b"7d1f2c3a-9b8e-4f6d-a1c2-3e4f5a6b7c8d"


@pytest.mark.parametrize(
    ("name", "reserialize"),
    [
        ("issue.created", lambda d: json.dumps(d).encode()),  # Python's default spacing
        (
            "event_alert.triggered",
            lambda d: json.dumps(d, separators=(",", ":"), ensure_ascii=False).encode(),
        ),
        (
            "metric_alert.critical",
            lambda d: json.dumps(d, separators=(",", ":")).replace("50.0", "50").encode(),
        ),
    ],
)
async def test_reserialized_json_fails_verification(
    kafka_settings: KafkaSettings, spool_dir: Path, name: str, reserialize: object
) -> None:
    body, headers = signed_fixture(name)
    changed = reserialize(json.loads(body))  # type: ignore[operator]
    assert changed != body
    async with (
        RawTopic(kafka_settings) as raw,
        running_ingest(kafka_settings, make_settings(spool_dir)) as (url, _),
    ):
        async with httpx.AsyncClient(base_url=url) as client:
            resp = await client.post("/webhooks/sentry", content=changed, headers=headers)
        assert resp.status_code == 401
        assert resp.json()["error"] == "signature_invalid"
        assert await raw.nothing_more()


def _signed(body: bytes, **extra: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Sentry-Hook-Resource": "issue",
        "Sentry-Hook-Signature": sign(body, TEST_SECRET),
        **extra,
    }


GOOD = b'{"action":"created","installation":{"uuid":"u"},"data":{"issue":{"id":"1"}}}'
DEEP = b"[" * 3000 + b"]" * 3000  # past CPython json's recursion limit
BAD_INPUTS = [
    ("get", "GET", b"", {}, 405),
    ("too large by content-length", "POST", b"x" * 9000, _signed(b"x" * 9000), 413),
    ("wrong content type", "POST", GOOD, {**_signed(GOOD), "Content-Type": "text/plain"}, 415),
    (
        "missing signature",
        "POST",
        GOOD,
        {"Content-Type": "application/json", "Sentry-Hook-Resource": "issue"},
        401,
    ),
    ("short signature", "POST", GOOD, _signed(GOOD, **{"Sentry-Hook-Signature": "abc"}), 401),
    ("non-hex signature", "POST", GOOD, _signed(GOOD, **{"Sentry-Hook-Signature": "z" * 64}), 401),
    (
        "uppercase signature",
        "POST",
        GOOD,
        _signed(GOOD, **{"Sentry-Hook-Signature": sign(GOOD, TEST_SECRET).upper()}),
        401,
    ),
    (
        "wrong signature",
        "POST",
        GOOD,
        _signed(GOOD, **{"Sentry-Hook-Signature": sign(GOOD, "other")}),
        401,
    ),
    ("invalid utf-8", "POST", b'{"a":"\xff"}', _signed(b'{"a":"\xff"}'), 400),
    ("invalid json", "POST", b'{"a":', _signed(b'{"a":'), 400),
    ("empty body", "POST", b"", _signed(b""), 400),
    ("deep nesting", "POST", DEEP, _signed(DEEP), 400),
    ("NaN", "POST", b'{"a":NaN}', _signed(b'{"a":NaN}'), 400),
    ("Infinity", "POST", b'{"a":-Infinity}', _signed(b'{"a":-Infinity}'), 400),
    (
        "huge integer",
        "POST",
        b'{"a":' + b"9" * 5000 + b"}",
        _signed(b'{"a":' + b"9" * 5000 + b"}"),
        400,
    ),
    ("not an object", "POST", b"[1]", _signed(b"[1]"), 400),
    (
        "missing resource",
        "POST",
        GOOD,
        {k: v for k, v in _signed(GOOD).items() if k != "Sentry-Hook-Resource"},
        400,
    ),
]


async def test_each_bad_input_gets_its_status_and_publishes_nothing(
    kafka_settings: KafkaSettings, spool_dir: Path
) -> None:
    settings = make_settings(spool_dir, max_body_bytes=8192)
    async with (
        RawTopic(kafka_settings) as raw,
        running_ingest(kafka_settings, settings) as (url, _),
    ):
        async with httpx.AsyncClient(base_url=url) as client:
            for label, method, body, headers, status in BAD_INPUTS:
                resp = await client.request(
                    method, "/webhooks/sentry", content=body, headers=headers
                )
                assert resp.status_code == status, (label, resp.text)
                assert resp.headers["content-type"].startswith("application/json"), label
                assert "error" in resp.json(), label
            two = [
                ("Content-Type", "application/json"),
                ("Sentry-Hook-Resource", "issue"),
                ("Sentry-Hook-Signature", sign(GOOD, TEST_SECRET)),
                ("Sentry-App-Signature", "0" * 64),
            ]
            resp = await client.post("/webhooks/sentry", content=GOOD, headers=two)
            assert resp.status_code == 400
            assert resp.json()["error"] == "signature_ambiguous"
            resp = await client.post(
                "/webhooks/sentry/no-such-connection", content=GOOD, headers=_signed(GOOD)
            )
            assert resp.status_code == 404
        assert await raw.nothing_more()


async def _chunks(body: bytes, pause_s: float):  # type: ignore[no-untyped-def]
    for i in range(0, len(body), 200):
        yield body[i : i + 200]
        await asyncio.sleep(pause_s)


async def test_streamed_body_limits_deadlines_and_disconnects(
    kafka_settings: KafkaSettings, spool_dir: Path
) -> None:
    settings = make_settings(spool_dir, max_body_bytes=4096, body_timeout_s=0.3)
    big = b'{"x":"' + b"a" * 8192 + b'"}'
    async with (
        RawTopic(kafka_settings) as raw,
        running_ingest(kafka_settings, settings) as (url, _),
    ):
        async with httpx.AsyncClient(base_url=url) as client:
            chunked = await client.post(
                "/webhooks/sentry", content=_chunks(big, 0), headers=_signed(big)
            )
            assert chunked.status_code == 413  # no Content-Length: counted while streaming
            slow = await client.post(
                "/webhooks/sentry", content=_chunks(GOOD * 8, 0.2), headers=_signed(GOOD * 8)
            )
            assert slow.status_code == 408
        # A client that hangs up mid-body: no publish, the server keeps serving.
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as s:
            s.sendall(
                b"POST /webhooks/sentry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Sentry-Hook-Resource: issue\r\nSentry-Hook-Signature: "
                + sign(GOOD, TEST_SECRET).encode()
                + b"\r\nContent-Length: 1000\r\n\r\n"
                + GOOD[:20]
            )
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/healthz")).status_code == 200
        assert await raw.nothing_more()


async def test_unknown_resource_and_action_are_accepted_as_unsupported(
    kafka_settings: KafkaSettings, spool_dir: Path
) -> None:
    body = b'{"action":"pr_created","installation":{"uuid":"u"},"data":{"run_id":1}}'
    async with (
        RawTopic(kafka_settings) as raw,
        running_ingest(kafka_settings, make_settings(spool_dir)) as (url, _),
    ):
        async with httpx.AsyncClient(base_url=url) as client:
            resp = await client.post(
                "/webhooks/sentry",
                content=body,
                headers=_signed(body, **{"Sentry-Hook-Resource": "seer"}),
            )
        assert resp.status_code == 200
        (record,) = await raw.read(1)
    event = payload_of(record)
    assert (event.resource, event.action, event.supported) == ("seer", "pr_created", False)


async def test_nul_and_lone_surrogates_in_valid_json_are_accepted_untouched(
    kafka_settings: KafkaSettings, spool_dir: Path
) -> None:
    body = b'{"action":"created","data":{"issue":{"id":"9","title":"a\\u0000b\\ud800c"}}}'
    async with (
        RawTopic(kafka_settings) as raw,
        running_ingest(kafka_settings, make_settings(spool_dir)) as (url, _),
    ):
        async with httpx.AsyncClient(base_url=url) as client:
            assert (
                await client.post("/webhooks/sentry", content=body, headers=_signed(body))
            ).status_code == 200
        (record,) = await raw.read(1)
    assert payload_of(record).body.encode() == body


async def test_rotated_secrets_both_verify(kafka_settings: KafkaSettings, spool_dir: Path) -> None:
    async with (
        running_ingest(kafka_settings, make_settings(spool_dir)) as (url, _),
        httpx.AsyncClient(base_url=url) as client,
    ):
        for secret in ("rotated-old-secret", TEST_SECRET):
            headers = {**_signed(GOOD), "Sentry-Hook-Signature": sign(GOOD, secret)}
            assert (
                await client.post("/webhooks/sentry", content=GOOD, headers=headers)
            ).status_code == 200


async def test_a_body_within_the_limit_whose_event_exceeds_a_kafka_record_gets_413(
    kafka_settings: KafkaSettings, spool_dir: Path
) -> None:
    """Under the 1 MiB body limit, but over one Kafka record once wrapped: 413, nothing sent
    (the broker would refuse it, and an idempotent producer would then stall its partition)."""
    body = b'{"action":"created","data":{"issue":{"id":"1"},"x":"' + b"a" * 1_000_100 + b'"}}'
    async with (
        RawTopic(kafka_settings) as raw,
        running_ingest(kafka_settings, make_settings(spool_dir)) as (url, _),
        httpx.AsyncClient(base_url=url) as client,
    ):
        resp = await client.post("/webhooks/sentry", content=body, headers=_signed(body))
        assert resp.status_code == 413, resp.text
        assert resp.json()["error"] == "too_large"
        ok = await client.post("/webhooks/sentry", content=GOOD, headers=_signed(GOOD))
        assert ok.status_code == 200
        records = await raw.read(2, timeout_s=3.0)
    assert [payload_of(r).body.encode() for r in records] == [GOOD]  # only the good one
