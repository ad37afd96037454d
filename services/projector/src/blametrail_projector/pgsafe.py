"""Pure: make values storable in Postgres ``text``/``jsonb`` without losing the row.

Postgres rejects ``\\u0000`` in text and jsonb, lone UTF-16 surrogates (not valid UTF-8), and
``NaN``/``Infinity`` in jsonb. Sentry payloads may carry all of them, so they are replaced
(U+FFFD for characters, ``null`` for non-finite numbers) and the caller is told that it happened.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

__all__ = ["Sanitized", "pg_json", "pg_jsonb", "pg_jsonb_model", "pg_text"]

_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"


class Sanitized:
    """Collects whether anything was replaced during one sanitization."""

    def __init__(self) -> None:
        self.changed = False

    def text(self, value: str) -> str:
        cleaned = _BAD_CHARS.sub(REPLACEMENT, value)
        if cleaned is not value and cleaned != value:
            self.changed = True
        return cleaned

    def json(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, float) and not math.isfinite(value):
            self.changed = True
            return None
        if isinstance(value, dict):
            return {self.text(str(k)): self.json(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.json(v) for v in value]
        return value


def pg_text(value: str | None) -> str | None:
    """``value`` safe for a ``text`` column."""
    if value is None or _BAD_CHARS.search(value) is None:  # the common case: nothing to replace
        return value
    return Sanitized().text(value)


def pg_json(value: Any) -> tuple[Any, bool]:
    """``value`` safe for ``jsonb``, and whether anything had to be replaced."""
    s = Sanitized()
    cleaned = s.json(value)
    return cleaned, s.changed


def pg_jsonb(value: Any) -> tuple[bytes, bool]:
    """``value`` encoded as JSON that ``jsonb`` accepts, and whether anything had to be replaced.

    One orjson pass in the common case: it refuses lone surrogates (and integers past 64 bits),
    escapes NUL as ``\\u0000`` (which ``jsonb`` refuses: that costs the slow path), and writes
    non-finite floats as ``null`` itself, unflagged (pydantic's JSON mode has already turned those
    in free-form dicts into ``None``; typed floats are our own computed scores).
    """
    try:
        out = orjson.dumps(value)
        if b"\\u0000" not in out:
            return out, False
    except TypeError:  # orjson.JSONEncodeError
        pass
    cleaned, changed = pg_json(value)
    try:
        return orjson.dumps(cleaned), changed
    except TypeError:  # e.g. an integer past 64 bits: jsonb takes it as numeric
        return json.dumps(cleaned, ensure_ascii=False).encode(), changed


def pg_jsonb_model(model: BaseModel, *, exclude_none: bool = False) -> tuple[bytes, bool]:
    """``pg_jsonb(model.model_dump(mode="json", exclude_none=...))``, in one pass of pydantic's
    own JSON writer in the common case (the same JSON values: the same serializer decides them).
    A NUL (written ``\\u0000``) or a lone surrogate (which pydantic cannot write) takes the
    cleaning path, which says it cleaned."""
    try:
        out = model.__pydantic_serializer__.to_json(model, exclude_none=exclude_none)
        if b"\\u0000" not in out:
            return out, False
    except PydanticSerializationError:
        pass
    return pg_jsonb(model.model_dump(mode="json", exclude_none=exclude_none))
