"""The stub's state: data, tokens, installations, grants, faults, clock. No HTTP here."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from blametrail_common.testing import fixture_bytes

from blametrail_sentry_stub.issue_update import AppRegistry
from blametrail_sentry_stub.issues import IssueStore

GRANT_LIFE_S = 10 * 60
TOKEN_LIFE_S = 8 * 60 * 60

FaultKind = Literal["429", "500", "502", "503", "slow", "reset", "lost", "401", "huge"]
"""``reset`` drops the connection before the request is handled; ``lost`` after (the effect
happened, the answer never arrives)."""


@dataclass
class Fault:
    """Applied to the next ``count`` requests whose route name matches (``"*"``: any)."""

    route: str
    kind: FaultKind
    count: int = 1
    delay_s: float = 0.0
    storm: bool = False  # made by a raging :class:`Storm`, not queued
    size_bytes: int = 0  # "huge": a 200 whose JSON body is at least this long


@dataclass
class Storm:
    """Every request whose route matches (``"*"``: any) answers ``kind`` until ``until``
    (stub-clock seconds): an outage (5xx, ``reset``, ``slow``) or a rate-limit storm (429)."""

    route: str
    kind: FaultKind
    until: float
    delay_s: float = 0.0


@dataclass
class Token:
    token: str
    org_slug: str
    expires_at: float | None = None  # stub-clock seconds; None never expires (internal)
    installation: str | None = None
    refresh_token: str | None = None


@dataclass
class Installation:
    uuid: str
    org_slug: str
    client_id: str
    client_secret: str
    status: str = "pending"


@dataclass(frozen=True)
class PublicApp:
    """The public app as Sentry knows it: who installs it is sent ``installation.created`` at
    ``webhook_url`` (signed with ``client_secret``) and redirected to ``redirect_url``."""

    slug: str
    client_id: str
    client_secret: str
    webhook_url: str
    redirect_url: str


@dataclass
class StubState:
    """Everything the stub knows. Mutate it directly in tests or through ``/_stub/`` routes."""

    clock_offset_s: float = 0.0
    rate_limit: int = 1000
    rate_window_s: int = 1
    concurrent_limit: int = 25
    latency_s: float = 0.0
    """Added to every API answer (as Sentry's own time to answer), so concurrency matters."""
    template_unknown_issues: bool = True
    issues: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    tokens: dict[str, Token] = field(default_factory=dict)
    installations: dict[str, Installation] = field(default_factory=dict)
    grants: dict[str, tuple[str, float]] = field(default_factory=dict)  # code -> (inst, expiry)
    external_issues: dict[str, dict[str, Any]] = field(default_factory=dict)
    releases: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # org -> newest first
    projects: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """org -> its projects (``{id, slug, name, ...}``), listed by ``/organizations/{org}/projects/``."""
    deploys: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    storms: list[Storm] = field(default_factory=list)
    public_app: PublicApp | None = None
    issue_store: IssueStore = field(default_factory=IssueStore)  # issues.py: status, merges
    apps: AppRegistry = field(default_factory=AppRegistry)  # issue_update.py: apps, webhooks
    requests: list[dict[str, Any]] = field(default_factory=list)
    limited: dict[str, int] = field(default_factory=dict)
    """429s the rate limiter answered, by reason (``"rate"``, ``"concurrent"``)."""
    _windows: dict[str, tuple[int, int]] = field(default_factory=dict)
    _in_flight: dict[str, int] = field(default_factory=dict)

    def now(self) -> float:
        return time.time() + self.clock_offset_s

    # -- data -----------------------------------------------------------------------------
    def issue(self, org: str, issue_id: str) -> dict[str, Any] | None:
        """Latest event and tags of an issue; unknown issues get the fixture, re-identified."""
        found = self.issues.get((org, issue_id))
        if found is None and self.template_unknown_issues:
            found = templated_issue(issue_id)
        return found

    # -- auth -----------------------------------------------------------------------------
    def add_internal_token(self, org_slug: str, token: str | None = None) -> str:
        token = token or secrets.token_hex(32)
        self.tokens[token] = Token(token, org_slug)
        return token

    def add_internal_installation(
        self, org_slug: str, uuid: str | None = None, token: str | None = None
    ) -> tuple[Installation, str]:
        """An internal integration as Sentry makes it: installed on creation (no grant), with
        a token that belongs to that installation (Sentry's installation tokens), which is what
        its external issues are made with. An existing ``token`` moves to it."""
        inst = Installation(uuid or secrets.token_hex(16), org_slug, "", "", status="installed")
        self.installations[inst.uuid] = inst
        token = token or secrets.token_hex(32)
        self.tokens[token] = Token(token, org_slug, installation=inst.uuid)
        return inst, token

    def token_for(self, authorization: str | None) -> Token | None:
        if not authorization or not authorization.startswith("Bearer "):
            return None
        tok = self.tokens.get(authorization[len("Bearer ") :])
        if tok is None or (tok.expires_at is not None and tok.expires_at <= self.now()):
            return None
        return tok

    def add_installation(
        self, org_slug: str, client_id: str, client_secret: str, uuid: str | None = None
    ) -> tuple[Installation, str]:
        """A pending installation and its grant code (valid 10 minutes of stub clock)."""
        inst = Installation(uuid or secrets.token_hex(16), org_slug, client_id, client_secret)
        self.installations[inst.uuid] = inst
        code = secrets.token_hex(20)
        self.grants[code] = (inst.uuid, self.now() + GRANT_LIFE_S)
        return inst, code

    def issue_token(self, inst: Installation) -> Token:
        """A new token pair for ``inst``; every earlier token of it is deleted (as Sentry does)."""
        for old in [t for t in self.tokens.values() if t.installation == inst.uuid]:
            del self.tokens[old.token]
        tok = Token(
            secrets.token_hex(32),
            inst.org_slug,
            expires_at=self.now() + TOKEN_LIFE_S,
            installation=inst.uuid,
            refresh_token=secrets.token_hex(32),
        )
        self.tokens[tok.token] = tok
        return tok

    # -- faults and rate limits ---------------------------------------------------------------
    def storm(
        self, kind: FaultKind, duration_s: float, route: str = "*", delay_s: float = 0.0
    ) -> Storm:
        """From now on, for ``duration_s`` seconds, every request of ``route`` answers ``kind``."""
        storm = Storm(route, kind, self.now() + duration_s, delay_s)
        self.storms.append(storm)
        return storm

    def calm(self) -> int:
        """End every storm now; returns how many were still raging."""
        raging = sum(1 for s in self.storms if s.until > self.now())
        self.storms.clear()
        return raging

    def take_fault(self, route: str) -> Fault | None:
        """The fault for this request: a raging storm first, else the next queued fault."""
        now = self.now()
        self.storms[:] = [s for s in self.storms if s.until > now]
        for storm in self.storms:
            if storm.route in (route, "*"):
                return Fault(route, storm.kind, 1, storm.delay_s, storm=True)
        for fault in self.faults:
            if fault.route in (route, "*") and fault.count > 0:
                fault.count -= 1
                if fault.count == 0:
                    self.faults.remove(fault)
                return fault
        return None

    def rate(self, caller: str) -> tuple[bool, dict[str, str]]:
        """Count a request of ``caller`` (as Sentry: one caller identity on one endpoint, see
        :func:`rate_key`) in its fixed window; returns (allowed, the window's headers)."""
        window = int(self.now()) // self.rate_window_s
        start, used = self._windows.get(caller, (window, 0))
        if start != window:
            start, used = window, 0
        used += 1
        self._windows[caller] = (start, used)
        reset = (window + 1) * self.rate_window_s
        headers = {
            "X-Sentry-Rate-Limit-Limit": str(self.rate_limit),
            "X-Sentry-Rate-Limit-Remaining": str(max(self.rate_limit - used, 0)),
            "X-Sentry-Rate-Limit-Reset": str(reset),
            "X-Sentry-Rate-Limit-ConcurrentLimit": str(self.concurrent_limit),
            "X-Sentry-Rate-Limit-ConcurrentRemaining": str(
                max(self.concurrent_limit - self._in_flight.get(caller, 0), 0)
            ),
        }
        if used > self.rate_limit:
            self.limited["rate"] = self.limited.get("rate", 0) + 1
        return used <= self.rate_limit, headers

    def enter(self, caller: str, headers: dict[str, str]) -> bool:
        """Start a request of ``caller`` if it has a concurrent slot left (Sentry's concurrent
        limiter); ``headers`` get the slots left after this one. Pair with :meth:`leave`."""
        running = self._in_flight.get(caller, 0)
        if running >= self.concurrent_limit:
            self.limited["concurrent"] = self.limited.get("concurrent", 0) + 1
            headers["X-Sentry-Rate-Limit-ConcurrentRemaining"] = "0"
            return False
        self._in_flight[caller] = running + 1
        headers["X-Sentry-Rate-Limit-ConcurrentRemaining"] = str(
            self.concurrent_limit - running - 1
        )
        return True

    def leave(self, caller: str) -> None:
        left = self._in_flight.get(caller, 1) - 1
        if left > 0:
            self._in_flight[caller] = left
        else:
            self._in_flight.pop(caller, None)


def rate_key(caller: str, route: str, method: str) -> str:
    """Sentry limits each caller identity on each endpoint (view and method) apart; an
    integration's identity is its organization, whichever of its tokens is used."""
    return f"{caller}:{route}:{method}"


_LATEST = fixture_bytes("api/issue-latest-event.response.json")
_TAGS = fixture_bytes("api/issue-tags.response.json")


def templated_issue(issue_id: str) -> dict[str, Any]:
    """The fixture issue's latest event and tags, as if they belonged to ``issue_id`` (fresh
    objects each time, parsed from the fixture's bytes: a storm asks for thousands, and
    ``copy.deepcopy`` of the parsed fixture cost most of each answer's time)."""
    event = orjson.loads(_LATEST)
    event["groupID"] = issue_id
    return {"latest_event": event, "tags": orjson.loads(_TAGS)}
