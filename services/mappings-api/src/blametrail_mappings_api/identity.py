"""Who calls, and signing in: the decisions over the stores (no HTTP here).

- :meth:`Identity.authenticate`: an ``Authorization: Bearer`` header (API key or session token)
  to a :class:`~.auth.Principal`, checked on every call (user enabled, role, organization);
- :meth:`Identity.sign_in`: email and password to a new session, throttled per account and
  per client address (failures counted in Postgres); wrong email, wrong password and a disabled
  user are one and the same refusal; a password hashed with older parameters is rehashed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from blametrail_mappings_api import auth
from blametrail_mappings_api.auth import Principal
from blametrail_mappings_api.passwords import HashGate, Passwords
from blametrail_mappings_api.settings import ApiSettings
from blametrail_mappings_api.store.api_keys import ApiKeyStore
from blametrail_mappings_api.store.db import Pool, Row
from blametrail_mappings_api.store.sessions import EXPIRED, SessionLimits, SessionStore
from blametrail_mappings_api.store.throttle import Limit, LoginThrottle
from blametrail_mappings_api.store.users import UserStore

__all__ = ["Clock", "Identity", "Refused", "SignedIn", "Throttled", "utcnow"]

Clock = Callable[[], datetime]

PURGE_EVERY = timedelta(minutes=5)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Refused(Exception):
    """Sign-in refused: wrong email or password, or a disabled user (one answer for all)."""


class Throttled(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many failed sign-ins; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class SignedIn:
    token: str
    session: Row
    user: Row


class Identity:
    def __init__(
        self,
        pool: Pool,
        settings: ApiSettings,
        clock: Clock = utcnow,
        passwords: Passwords | None = None,
    ) -> None:
        limits = SessionLimits(
            timedelta(seconds=settings.session_idle_s),
            timedelta(seconds=settings.session_absolute_s),
        )
        self.keys, self.users = ApiKeyStore(pool), UserStore(pool)
        self.sessions, self.throttle = SessionStore(pool, limits), LoginThrottle(pool)
        self.settings, self.clock = settings, clock
        self.passwords = passwords or Passwords()
        self.gate = HashGate(settings.hash_concurrency, settings.hash_queue)
        self._purged_at: datetime | None = None
        window = timedelta(seconds=settings.login_window_s)
        self._account = Limit("account", settings.login_account_failures, window)
        self._address = Limit("address", settings.login_address_failures, window)

    async def authenticate(self, authorization: str | None) -> Principal | str | None:
        """The principal of a live credential; ``"expired"`` for a session that is over;
        ``None`` for no credential, a malformed one, or one that is not (or no longer) live."""
        cred = auth.parse_credential(authorization)
        if cred is None:
            return None
        if cred.kind == "key":
            return await self.keys.principal(cred, self.clock())
        found = await self.sessions.principal(cred, self.clock())
        return EXPIRED if found == EXPIRED else found

    async def sign_in(self, email: str, password: str, address: str) -> SignedIn:
        """A new session; :class:`~.passwords.Busy` when every hashing slot and queue place is
        taken (nothing counted), :class:`Throttled` while either counter is over its limit (the
        attempt is counted before the password is checked), :class:`Refused` for any wrong
        credential."""
        account_key = f"account:{email.strip().lower()}"
        keys = {account_key: self._account, f"address:{address}": self._address}
        await self._purge_now_and_then(self.clock())
        async with self.gate.admit():
            now = self.clock()
            wait, windows = await self.throttle.attempt(keys, now)
            if wait is not None:
                raise Throttled(wait)
            user = await self.users.by_email(email.strip())
            stored = user["password_hash"] if user else None
            ok = await self.gate.run(self.passwords.verify, stored, password)
            if not ok or user is None or user["disabled"]:
                raise Refused
            await self.throttle.succeeded(account_key, windows)
            if self.passwords.needs_rehash(user["password_hash"]):
                rehashed = await self.gate.run(self.passwords.hash, password)
                await self.users.set_hash(str(user["id"]), rehashed)
        token, session = await self.sessions.issue(str(user["id"]), now)
        return SignedIn(token, session, user)

    async def _purge_now_and_then(self, now: datetime) -> None:
        """At most every :data:`PURGE_EVERY` (per process): delete throttle rows whose window
        ended and sessions over for a day (both tables would otherwise only grow)."""
        if self._purged_at is not None and now - self._purged_at < PURGE_EVERY:
            return
        self._purged_at = now
        await self.throttle.purge(now, self._account.window)
        await self.sessions.purge(now, timedelta(days=1))

    async def hash_password(self, password: str) -> str:
        """A new hash, in the same bound as sign-ins (:class:`~.passwords.Busy` when full)."""
        async with self.gate.admit():
            return await self.gate.run(self.passwords.hash, password)
