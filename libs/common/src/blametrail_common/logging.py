"""Structured JSON logs on stderr, one object per line, with secrets redacted.

Call :func:`configure_logging` once from an entry point. Add fields with
``log.info("msg", extra={"topic": t})``; keys that look like secrets are replaced by ``"***"``.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from blametrail_common.settings import LogSettings

__all__ = ["JsonFormatter", "configure_logging", "redact"]

_STANDARD = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}
_SECRET_KEY = re.compile(r"secret|token|password|signature|authorization|api_key|cookie", re.I)


def redact(fields: dict[str, Any]) -> dict[str, Any]:
    """Return ``fields`` with the values of secret-looking keys masked (recursively)."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if _SECRET_KEY.search(key):
            out[key] = "***"
        elif isinstance(value, dict):
            out[key] = redact(value)
        else:
            out[key] = value
    return out


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        doc.update(redact(extra))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure_logging(service: str, settings: LogSettings | None = None) -> None:
    """Route every logger to stderr in the configured format and level."""
    settings = settings or LogSettings()
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # httpx and httpcore log every request at INFO: a JSON line per Sentry call (three per
    # enrichment) costs more CPU than the call's own bookkeeping; their warnings still show.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
