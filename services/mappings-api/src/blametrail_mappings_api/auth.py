"""Pure: API keys. A key is ``bt_<prefix>_<secret>``; only SHA-256(key) is stored, found by prefix."""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["key_hash", "new_key", "parse_key"]


def new_key() -> tuple[str, str]:
    """A fresh ``(key, prefix)``; the key is shown once and never stored."""
    prefix = secrets.token_hex(6)
    return f"bt_{prefix}_{secrets.token_urlsafe(32)}", prefix


def parse_key(authorization: str | None) -> tuple[str, str] | None:
    """``(key, prefix)`` from an ``Authorization: Bearer`` header, or ``None`` if malformed."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    key = authorization[len("Bearer ") :].strip()
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != "bt" or not parts[1] or not parts[2]:
        return None
    return key, parts[1]


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(key_hash(key), stored_hash)
