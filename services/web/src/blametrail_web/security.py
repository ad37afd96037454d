"""Pure: CSRF tokens and signed cookie values (HMAC-SHA256, compared in constant time).

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
from typing import Any

__all__ = ["csrf_token", "csrf_valid", "sign_value", "unsign_value"]


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
