"""Pure: is this body acceptable JSON, what is it about, and how is it keyed on Kafka.

The standard library's parser decides what is acceptable: orjson refuses lone surrogate
escapes (``"\\ud800"``), which Sentry may send and which we must accept byte for byte, and
reads integers past 64 bits as floats, and nests deeper. orjson is only the fast path, skipped
by any body with a run of 19 digits or over 512 brackets: what it accepts, the standard parser accepts too, with the same result (a
property test holds us to that). Whatever it refuses goes to the standard parser, and every
hazard that one has (deep nesting, ``NaN``, huge integers) becomes :class:`BadPayload`.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from blametrail_common.jsontext import orjson_agrees

__all__ = ["SUPPORTED", "BadPayload", "kafka_key", "parse", "summarize"]

SUPPORTED: dict[str, frozenset[str]] = {
    "issue": frozenset({"created", "resolved", "assigned", "ignored", "archived", "unresolved"}),
    "event_alert": frozenset({"triggered"}),
    "metric_alert": frozenset({"critical", "warning", "resolved", "open"}),
    "installation": frozenset({"created", "deleted"}),
    "error": frozenset({"created"}),
    "comment": frozenset({"created", "updated", "deleted"}),
}


class BadPayload(ValueError):
    """The body is not a JSON object we can accept; the message is safe to return to the sender."""


def _no_constants(token: str) -> Any:
    raise BadPayload(f"non-finite number {token} is not JSON")


def parse(body: bytes) -> dict[str, Any]:
    """Decode and parse the body; raises :class:`BadPayload` with a clear reason."""
    if not body:
        raise BadPayload("empty body")
    if orjson_agrees(body):  # no integer past 64 bits, no nesting past the standard parser's
        try:
            fast = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # maybe fine for the standard parser (lone surrogates), maybe not
        else:
            if isinstance(fast, dict):
                return fast
    return parse_std(body)


def parse_std(body: bytes) -> dict[str, Any]:
    """:func:`parse` by the standard library alone: the reference for what is acceptable."""
    if not body:
        raise BadPayload("empty body")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadPayload(f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        doc = json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise BadPayload("JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise BadPayload(
            f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError as exc:  # e.g. an integer past the interpreter's digit limit
        raise BadPayload(f"invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadPayload(f"body must be a JSON object, got {type(doc).__name__}")
    return doc


def summarize(resource: str, doc: dict[str, Any]) -> tuple[str | None, str | None, bool]:
    """``(action, installation uuid, supported)`` of a parsed webhook."""
    action = doc.get("action") if isinstance(doc.get("action"), str) else None
    inst = doc.get("installation")
    uuid = (
        inst.get("uuid") if isinstance(inst, dict) and isinstance(inst.get("uuid"), str) else None
    )
    supported = action is not None and action in SUPPORTED.get(resource, frozenset())
    return action, uuid, supported


def kafka_key(resource: str, doc: dict[str, Any], body_sha256: str) -> str:
    """Key that puts every webhook about one Sentry issue in one partition.

    Issue id where the payload names one; ``metric_alert:<id>`` for metric alerts (no issue);
    the installation uuid for installation events; the body hash otherwise.
    """
    raw_data = doc.get("data")
    data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
    candidates: list[Any] = []
    if resource == "installation":
        inst = doc.get("installation") or {}
        candidates = [inst.get("uuid") if isinstance(inst, dict) else None]
    elif resource == "metric_alert":
        alert = data.get("metric_alert")
        if isinstance(alert, dict) and alert.get("id") is not None:
            return f"metric_alert:{alert['id']}"
    else:
        issue, event, error = (data.get(k) for k in ("issue", "event", "error"))
        candidates = [
            issue.get("id") if isinstance(issue, dict) else None,
            event.get("issue_id") if isinstance(event, dict) else None,
            error.get("issue_id") if isinstance(error, dict) else None,
            data.get("issue_id"),
        ]
    for value in candidates:
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return str(value)
    return body_sha256
