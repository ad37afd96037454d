"""The public Sentry app's own calls (PROTOCOL §3): grant exchange, refresh, JWT-bearer recovery,
installation verification. Transport only; the decisions live in :mod:`.oauth_flow` and
:mod:`.token_keeper`.

Sentry answers the token endpoints with ``{token, refreshToken, expiresAt, ...}`` (201). A 4xx is
definitive (:class:`SentryAuthRefused`: an unknown, used or expired grant, a used refresh token);
anything else (5xx, timeout, reset) leaves the outcome unknown (:class:`SentryUnavailable`) —
for a refresh that may have consumed the old pair, which is what the JWT-bearer grant recovers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

__all__ = [
    "JWT_GRANT",
    "SentryApp",
    "SentryAuthRefused",
    "SentryUnavailable",
    "TokenPair",
    "jwt_bearer",
]

JWT_GRANT = "urn:sentry:params:oauth:grant-type:jwt-bearer"


class SentryAuthRefused(Exception):
    """Sentry refused for good (4xx): ``status`` and its ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail


class SentryUnavailable(Exception):
    """No definitive answer (5xx, timeout, connection error): the call may or may not have run."""


@dataclass(frozen=True)
class TokenPair:
    token: str
    refresh_token: str
    expires_at: datetime

    def __repr__(self) -> str:  # never print the secrets
        return f"TokenPair(expires_at={self.expires_at.isoformat()})"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_bearer(client_id: str, client_secret: str, now: float, jti: str | None = None) -> str:
    """The HS256 JWT of Sentry's manual refresh: ``iss=sub=client_id``, a 60 s life, a nonce."""
    header = _b64(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    claims = _b64(
        orjson.dumps(
            {
                "iss": client_id,
                "sub": client_id,
                "iat": int(now),
                "exp": int(now) + 60,
                "jti": jti or secrets.token_hex(16),
            }
        )
    )
    signing_input = f"{header}.{claims}".encode()
    sig = hmac.new(client_secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{claims}.{_b64(sig)}"


def _pair(doc: Any) -> TokenPair:
    try:
        expires = datetime.fromisoformat(str(doc["expiresAt"]).replace("Z", "+00:00"))
        return TokenPair(str(doc["token"]), str(doc["refreshToken"]), expires.astimezone(UTC))
    except (KeyError, TypeError, ValueError) as exc:
        raise SentryUnavailable(
            f"token response without token/refreshToken/expiresAt: {exc}"
        ) from None


@dataclass
class SentryApp:
    """Calls as the public app (``client_id`` / current ``client_secret``) to ``base_url``."""

    http: httpx.AsyncClient
    base_url: str
    client_id: str
    client_secret: str = field(repr=False)
    timeout_s: float = 10.0

    def _inst(self, installation: str) -> str:
        return f"{self.base_url.rstrip('/')}/api/0/sentry-app-installations/{installation}/"

    async def exchange(self, installation: str, code: str) -> TokenPair:
        body = {"grant_type": "authorization_code", "code": code}
        return await self._token(installation, body)

    async def refresh(self, installation: str, refresh_token: str) -> TokenPair:
        body = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        return await self._token(installation, body)

    async def recover(self, installation: str, now: float) -> TokenPair:
        """A new pair without the (possibly consumed) refresh token: the JWT-bearer grant."""
        jwt = jwt_bearer(self.client_id, self.client_secret, now)
        return await self._token(installation, {"grant_type": JWT_GRANT}, bearer=jwt)

    async def verify(self, installation: str, token: str) -> dict[str, Any]:
        """``PUT {"status": "installed"}``; returns the installation (its organization's slug)."""
        doc = await self._send(
            "PUT", self._inst(installation), {"status": "installed"}, bearer=token
        )
        return doc if isinstance(doc, dict) else {}

    async def _token(
        self, installation: str, body: dict[str, str], bearer: str | None = None
    ) -> TokenPair:
        if bearer is None:
            body = {**body, "client_id": self.client_id, "client_secret": self.client_secret}
        url = self._inst(installation) + "authorizations/"
        return _pair(await self._send("POST", url, body, bearer=bearer))

    async def _send(
        self, method: str, url: str, body: dict[str, str], bearer: str | None = None
    ) -> Any:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        try:
            resp = await self.http.request(
                method, url, json=body, headers=headers, timeout=self.timeout_s
            )
        except httpx.HTTPError as exc:
            raise SentryUnavailable(f"{method} {url}: {type(exc).__name__}") from None
        if 400 <= resp.status_code < 500 and resp.status_code != 429:
            try:
                doc = resp.json()
            except ValueError:
                doc = None
            detail = str(doc.get("detail")) if isinstance(doc, dict) else resp.text[:200]
            raise SentryAuthRefused(resp.status_code, detail)
        if resp.status_code >= 300:
            raise SentryUnavailable(f"{method} {url}: HTTP {resp.status_code}")
        try:
            return resp.json()
        except ValueError:
            raise SentryUnavailable(f"{method} {url}: not JSON") from None
