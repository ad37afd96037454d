"""The Sentry web API as BlameTrail's workers call it (httpx), with Sentry's rate limits honoured.

Shared by every process that calls Sentry on a connection's behalf (the enricher; write-back and
reconciliation), so each obeys the same budget rules. Install with ``blametrail-common[sentry]``.

Contract of every call: returns the decoded JSON, or raises one of
:class:`TokenRejected` (401: ask the token owner for a refresh), :class:`NotFound` (404: the
issue is gone; permanent), :class:`SentryApiError` itself (403 and other 4xx: Sentry answered
no; permanent) or :class:`GaveUp` (retries exhausted on 5xx/timeouts/429s: Sentry did not
answer; the only *transient* outcome, see :func:`is_transient`). Calls to
one Sentry organization share a concurrency limit and a "blocked until" time learnt from
``X-Sentry-Rate-Limit-Remaining``/``-Reset`` (Sentry sends no ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

__all__ = [
    "GaveUp",
    "HttpxSentryApi",
    "NotFound",
    "RetryPolicy",
    "SentryApi",
    "SentryApiError",
    "SentryCredentials",
    "TokenRejected",
    "backoff_delay",
    "is_transient",
    "rate_limit_wait",
]


class SentryApiError(Exception):
    """A Sentry API call failed for good; ``str()`` is the reason recorded with the failure."""


class TokenRejected(SentryApiError):
    pass


class NotFound(SentryApiError):
    pass


class GaveUp(SentryApiError):
    pass


def is_transient(exc: SentryApiError) -> bool:
    """Pure: did Sentry fail to answer (an outage, worth retrying later), rather than answer no?"""
    return isinstance(exc, GaveUp)


@dataclass(frozen=True, slots=True)
class SentryCredentials:
    base_url: str
    org_slug: str
    token: str

    def __repr__(self) -> str:  # never print the token
        return f"SentryCredentials(base_url={self.base_url!r}, org_slug={self.org_slug!r})"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay_s: float = 0.2
    max_delay_s: float = 10.0
    max_rate_limit_wait_s: float = 120.0
    timeout_s: float = 5.0
    concurrency_per_org: int = 4


class SentryApi(Protocol):
    """What the enricher needs from Sentry (other callers use :meth:`HttpxSentryApi.call`)."""

    async def latest_event(self, creds: SentryCredentials, issue_id: str) -> dict[str, Any]: ...

    async def issue_tags(self, creds: SentryCredentials, issue_id: str) -> list[Any]: ...


def backoff_delay(attempt: int, policy: RetryPolicy, rng: Callable[[], float]) -> float:
    """Full-jitter exponential backoff before retry number ``attempt`` (1-based)."""
    return rng() * min(policy.max_delay_s, policy.base_delay_s * 2.0 ** (attempt - 1))


def rate_limit_wait(headers: Mapping[str, str], now: float, status: int) -> float:
    """Seconds to hold calls to this organization, from Sentry's rate-limit headers."""
    remaining, reset = (
        headers.get("x-sentry-rate-limit-remaining"),
        headers.get("x-sentry-rate-limit-reset"),
    )
    if status != 429 and remaining != "0":
        return 0.0
    try:
        return max(float(reset) - now, 0.0) if reset else 1.0
    except ValueError:
        return 1.0


@dataclass
class _OrgGate:
    slots: asyncio.Semaphore
    blocked_until: float = 0.0


@dataclass
class HttpxSentryApi:
    """:class:`SentryApi` over an ``httpx.AsyncClient``; clock, sleep and jitter injectable for tests."""

    client: httpx.AsyncClient
    policy: RetryPolicy = RetryPolicy()
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rng: Callable[[], float] = random.random
    _gates: dict[str, _OrgGate] = field(default_factory=dict)

    async def latest_event(self, creds: SentryCredentials, issue_id: str) -> dict[str, Any]:
        """Org-scoped path first; the unscoped one if the org path does not know the issue."""
        try:
            found = await self._get(
                creds, f"/api/0/organizations/{creds.org_slug}/issues/{issue_id}/events/latest/"
            )
        except NotFound:
            found = await self._get(creds, f"/api/0/issues/{issue_id}/events/latest/")
        if not isinstance(found, dict):
            raise GaveUp(f"latest event of issue {issue_id}: expected an object")
        return found

    async def issue_tags(self, creds: SentryCredentials, issue_id: str) -> list[Any]:
        found = await self._get(
            creds, f"/api/0/organizations/{creds.org_slug}/issues/{issue_id}/tags/"
        )
        if not isinstance(found, list):
            raise GaveUp(f"tags of issue {issue_id}: expected a list")
        return found

    def _gate(self, org: str) -> _OrgGate:
        if org not in self._gates:
            self._gates[org] = _OrgGate(asyncio.Semaphore(self.policy.concurrency_per_org))
        return self._gates[org]

    async def create_external_issue(
        self, creds: SentryCredentials, installation_uuid: str, body: Mapping[str, str]
    ) -> dict[str, Any]:
        """Show a BlameTrail link on a Sentry issue (``issueId``, ``webUrl``, ``project``,
        ``identifier``); Sentry keeps one per issue and app, so posting again updates it."""
        found = await self.call(
            "POST",
            creds,
            f"/api/0/sentry-app-installations/{installation_uuid}/external-issues/",
            dict(body),
        )
        if not isinstance(found, dict):
            raise GaveUp("external issue: expected an object")
        return found

    async def _get(self, creds: SentryCredentials, path: str) -> Any:
        return await self.call("GET", creds, path)

    async def call(self, method: str, creds: SentryCredentials, path: str, body: Any = None) -> Any:
        """One Sentry API call with this organization's shared gate, retries and rate-limit
        holds; the decoded JSON, or one of the errors in the module's contract."""
        gate, attempt, waited, last = self._gate(creds.org_slug), 0, 0.0, ""
        while True:
            hold = gate.blocked_until - self.clock()
            if hold > 0:
                if waited + hold > self.policy.max_rate_limit_wait_s:
                    raise GaveUp(
                        f"{method} {path}: rate limited for over {self.policy.max_rate_limit_wait_s:.0f}s"
                    )
                waited += hold
                await self.sleep(hold)
            async with gate.slots:
                outcome = await self._once(method, creds, path, body, gate)
            if not isinstance(outcome, _Retry):
                return outcome
            if outcome.counts:
                attempt += 1
                last = outcome.reason
                if attempt >= self.policy.max_attempts:
                    raise GaveUp(f"{method} {path}: gave up after {attempt} attempts: {last}")
                await self.sleep(backoff_delay(attempt, self.policy, self.rng))

    async def _once(
        self, method: str, creds: SentryCredentials, path: str, body: Any, gate: _OrgGate
    ) -> Any:
        try:
            resp = await self.client.request(
                method,
                creds.base_url.rstrip("/") + path,
                headers={"Authorization": f"Bearer {creds.token}"},
                json=body,
                timeout=self.policy.timeout_s,
            )
        except httpx.TimeoutException:
            return _Retry(f"timeout after {self.policy.timeout_s}s")
        except httpx.TransportError as exc:
            return _Retry(f"transport error {type(exc).__name__}")
        hold = rate_limit_wait(resp.headers, self.clock(), resp.status_code)
        if hold:
            gate.blocked_until = max(gate.blocked_until, self.clock() + hold)
        if resp.status_code in (200, 201):
            try:
                return resp.json()
            except ValueError:
                return _Retry("200 with a body that is not JSON")
        if resp.status_code == 429:
            gate.blocked_until = max(gate.blocked_until, self.clock() + (hold or 1.0))
            return _Retry("429 rate limited", counts=False)
        if resp.status_code == 401:
            raise TokenRejected(f"{method} {path}: 401, token rejected")
        if resp.status_code == 404:
            raise NotFound(f"{method} {path}: 404")
        if 400 <= resp.status_code < 500 and resp.status_code != 408:
            # 400, 403 (no access to the organization or issue), 410...: an answer, not an outage.
            raise SentryApiError(f"{method} {path}: {resp.status_code} {resp.text[:200]}")
        return _Retry(f"HTTP {resp.status_code}")


@dataclass(frozen=True, slots=True)
class _Retry:
    reason: str
    counts: bool = True
