"""Pure: credentials and who holds them.

An API key is ``bt_<prefix>_<secret>``, a session token ``bts_<prefix>_<secret>``; only
SHA-256 of either is stored, its row found by prefix. :class:`Principal` is who a checked
credential acts as (a user, through a session, or an API key).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ROLES",
    "Credential",
    "Principal",
    "key_hash",
    "key_matches",
    "new_key",
    "new_session_token",
    "parse_credential",
    "parse_key",
]

Role = Literal["admin", "member"]
ROLES: tuple[Role, ...] = ("admin", "member")


@dataclass(frozen=True)
class Principal:
    """Who acts: ``kind`` ``"user"`` (signed in) or ``"api_key"``; ``id`` the user's or the key's
    id; ``name`` what to show (the user's name, the key's name); ``role`` ``admin`` | ``member``;
    ``org`` the organization's id (``org_slug`` its slug); ``email`` a user's, ``None`` for a
    key; ``session_id`` the session a user acts through."""

    kind: Literal["user", "api_key"]
    id: str
    name: str
    role: Role
    org: str
    email: str | None = None
    session_id: str | None = None
    org_slug: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class Credential:
    """A parsed ``Authorization: Bearer`` value: ``kind`` ``"key"`` or ``"session"``."""

    kind: Literal["key", "session"]
    token: str
    prefix: str

    def __repr__(self) -> str:  # never print the secret
        return f"Credential(kind={self.kind!r}, prefix={self.prefix!r})"


def new_key() -> tuple[str, str]:
    """A fresh API key ``(key, prefix)``; the key is shown once and never stored."""
    prefix = secrets.token_hex(6)
    return f"bt_{prefix}_{secrets.token_urlsafe(32)}", prefix


def new_session_token() -> tuple[str, str]:
    """A fresh session token ``(token, prefix)``."""
    prefix = secrets.token_hex(8)
    return f"bts_{prefix}_{secrets.token_urlsafe(32)}", prefix


_KINDS: dict[str, Literal["key", "session"]] = {"bt": "key", "bts": "session"}


def parse_credential(authorization: str | None) -> Credential | None:
    """The credential of an ``Authorization: Bearer`` header, or ``None`` if malformed."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    token = authorization[len("Bearer ") :].strip()
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] not in _KINDS or not parts[1] or not parts[2]:
        return None
    return Credential(_KINDS[parts[0]], token, parts[1])


def parse_key(authorization: str | None) -> tuple[str, str] | None:
    """``(key, prefix)`` of an API key header, or ``None`` (a session token is none)."""
    found = parse_credential(authorization)
    return (found.token, found.prefix) if found and found.kind == "key" else None


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(key_hash(key), stored_hash)
