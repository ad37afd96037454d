import logging

import orjson
import pytest
from blametrail_common.crypto import SecretBox, SecretBoxError, generate_key
from blametrail_common.logging import JsonFormatter


def test_secret_box_round_trip_and_rotation() -> None:
    old, new = generate_key(), generate_key()
    token = SecretBox(old).encrypt("sntrys_abc")
    assert "sntrys_abc" not in token
    assert SecretBox(f"{new},{old}").decrypt(token) == "sntrys_abc"
    with pytest.raises(SecretBoxError, match="could not be decrypted") as info:
        SecretBox(new).decrypt(token)
    assert token not in str(info.value)


def test_secret_box_requires_a_key() -> None:
    with pytest.raises(SecretBoxError, match="no encryption key"):
        SecretBox(" ")


def test_json_logs_redact_secret_fields() -> None:
    record = logging.makeLogRecord(
        {
            "msg": "hello %s",
            "args": ("world",),
            "levelname": "INFO",
            "name": "t",
            "client_secret": "s3cr3t",
            "nested": {"auth_token": "tok", "ok": 1},
            "topic": "x",
        }
    )
    line = JsonFormatter("svc").format(record)
    doc = orjson.loads(line)
    assert doc["msg"] == "hello world"
    assert doc["service"] == "svc"
    assert doc["client_secret"] == "***"
    assert doc["nested"] == {"auth_token": "***", "ok": 1}
    assert doc["topic"] == "x"
    assert "s3cr3t" not in line
    assert 'tok"' not in line


def test_scrub_surrogates_replaces_only_lone_surrogates() -> None:
    from blametrail_common.text import scrub_surrogates

    value = {"k\ud800": ["a\udfffb", 1, None, {"x": "caf\u00e9 \U0001f600 \x00"}]}
    assert scrub_surrogates(value) == {
        "k\ufffd": ["a\ufffdb", 1, None, {"x": "caf\u00e9 \U0001f600 \x00"}]
    }
