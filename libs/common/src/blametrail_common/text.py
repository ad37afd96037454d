"""Pure text hygiene shared by services.

Sentry bodies may carry lone UTF-16 surrogate escapes (``"\\ud800"``): valid JSON, but not
encodable as UTF-8, so no event holding one could be serialized. Parsed values are scrubbed
once, at the edge where the raw body is interpreted; the raw bytes themselves stay untouched.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["REPLACEMENT", "scrub_surrogates"]

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")


def scrub_surrogates(value: Any) -> Any:
    """``value`` (parsed JSON) with every lone surrogate in strings and keys replaced by U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub(REPLACEMENT, value)
    if isinstance(value, dict):
        return {scrub_surrogates(k): scrub_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_surrogates(v) for v in value]
    return value
