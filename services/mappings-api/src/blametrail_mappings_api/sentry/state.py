"""The connect state (pure): a signed, expiring token naming the organization that started an
install, carried by the connect link and then by a cookie (Sentry's redirect back names only the
installation, so the cookie is what ties the browser's return to the organization)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

__all__ = ["COOKIE", "ConnectState", "OAuthRefused"]

COOKIE = "bt_sentry_connect"


class OAuthRefused(Exception):
    """A request we turn down: ``status`` and a message for the person in the browser."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class ConnectState:
    """Signed, expiring ``state``: ``b64(json{org, exp, nonce}).hex(hmac)``, under keys derived
    from ``BLAMETRAIL_SECRET_KEYS`` (all of them verify, the first signs: key rotation)."""

    keys: Sequence[bytes] = field(repr=False)

    def confirm_token(self, state: str, installation: str) -> str:
        """Ties the confirmation form to this browser's state and this installation."""
        return self._mac(self.keys[0], f"confirm\0{state}\0{installation}")

    def _mac(self, key: bytes, body: str) -> str:
        return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()

    def sign(self, org: str, now: float, ttl_s: int) -> str:
        doc = {"org": org, "exp": int(now) + ttl_s, "nonce": secrets.token_hex(8)}
        body = base64.urlsafe_b64encode(orjson.dumps(doc)).decode().rstrip("=")
        return f"{body}.{self._mac(self.keys[0], body)}"

    def verify(self, state: str | None, now: float) -> str:
        """The organization a valid, unexpired state names; :class:`OAuthRefused` otherwise."""
        if not state:
            raise OAuthRefused(
                400,
                "start connecting Sentry from BlameTrail (a connect link): this browser brought"
                " no connect state",
            )
        body, _, mac = state.partition(".")
        given = mac.encode("utf-8", "replace")
        if not body or not any(
            hmac.compare_digest(given, self._mac(k, body).encode()) for k in self.keys
        ):
            raise OAuthRefused(
                400, "this connect link is not valid; create a new one in BlameTrail"
            )
        try:
            doc = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            org, exp = str(doc["org"]), int(doc["exp"])
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            raise OAuthRefused(400, "this connect link is not valid") from None
        if exp <= now:
            raise OAuthRefused(400, "this connect link has expired; create a new one in BlameTrail")
        return org
