"""Pure: CSRF tokens and signed cookie values (HMAC-SHA256, compared in constant time), the
client's address as the API must be told it (``X-Forwarded-For``), and which link targets may
become an ``href``.

The CSRF token is bound to what identifies the browser: the session token once signed in, a
random pre-session nonce before (so the sign-in form is protected too). It is never stored; the
server recomputes it from the cookie and compares. A site that cannot read our cookies cannot
compute it, and SameSite=Lax keeps them off cross-site POSTs as a second line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable
from typing import Any

from blametrail_common.forwarded import Network, client_address, is_trusted

__all__ = [
    "csrf_token",
    "csrf_valid",
    "forward_for",
    "safe_url",
    "sign_value",
    "unsign_value",
]


def _mac(key: bytes, purpose: str, value: str) -> str:
    digest = hmac.new(key, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def csrf_token(key: bytes, binding: str) -> str:
    return _mac(key, "csrf", binding)


def csrf_valid(key: bytes, binding: str, presented: str | None) -> bool:
    if not binding or not presented:
        return False
    return hmac.compare_digest(csrf_token(key, binding).encode(), presented.encode())


def sign_value(key: bytes, purpose: str, data: Any) -> str:
    body = base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode()
    return f"{body}.{_mac(key, purpose, body)}"


def unsign_value(key: bytes, purpose: str, signed: str | None) -> Any:
    """The data signed by :func:`sign_value`, or None when missing, malformed or tampered."""
    if not signed or "." not in signed:
        return None
    body, mac = signed.rsplit(".", 1)
    if not hmac.compare_digest(_mac(key, purpose, body).encode(), mac.encode()):
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(body.encode()))
    except (ValueError, UnicodeError):
        return None


def forward_for(peer: str | None, received: Iterable[str], trusted: tuple[Network, ...]) -> str:
    """The ``X-Forwarded-For`` to send the API (README, "Sign-in: whose address the throttle
    counts"): ``<received>, <client>`` when the peer is a proxy we trust, else just ``<client>``
    (the peer). Never the browser's header as is; never our own peer when a proxy is in front."""
    hops = [h.strip() for h in ",".join(received).split(",") if h.strip()]
    client = client_address(peer, hops, trusted)
    if hops and is_trusted(peer or "", trusted):
        return ", ".join([*hops, client])
    return client


_LINK_SCHEMES = ("http://", "https://")
_INVISIBLE = "".join(chr(c) for c in range(0x21))


def safe_url(value: Any) -> str | None:
    """``value`` when it is an absolute http(s) URL, else None (shown as plain text, never as an
    ``href``): a ``javascript:``, ``data:`` or ``vbscript:`` link from Sentry's strings would run
    in our origin. Browsers strip leading/trailing C0 controls and spaces and drop tabs and
    newlines anywhere before reading the scheme, so a value holding any of them is refused."""
    if not isinstance(value, str) or not value:
        return None
    if any(ch in value for ch in "\t\n\r") or value[0] in _INVISIBLE or value[-1] in _INVISIBLE:
        return None
    if not value.lower().startswith(_LINK_SCHEMES) or len(value) > 4096:
        return None
    return value
