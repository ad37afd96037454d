"""Pure: Sentry's HMAC-SHA256 signature over the raw body bytes (PROTOCOL §1.2).

The header value is 64 lowercase hex characters. Every candidate secret is compared in constant
time and all are tried, so timing says neither whether nor which secret matched.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable

__all__ = ["is_well_formed", "sign", "verify"]

_HEX64 = re.compile(r"[0-9a-f]{64}")


def sign(body: bytes, secret: str) -> str:
    """The signature Sentry sends for ``body`` under ``secret``."""
    return hmac.digest(secret.encode("utf-8"), body, "sha256").hex()  # one-shot, in C


def is_well_formed(header_value: str) -> bool:
    return _HEX64.fullmatch(header_value) is not None


def verify(body: bytes, header_value: str, secrets: Iterable[str]) -> bool:
    """True when ``header_value`` is the signature of ``body`` under any of ``secrets``."""
    if not is_well_formed(header_value):
        return False
    given = header_value.encode("ascii")
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(sign(body, secret).encode("ascii"), given)
    return matched
