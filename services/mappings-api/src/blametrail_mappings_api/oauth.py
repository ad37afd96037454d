"""Public (OAuth) installs: connect links, grant exchange, binding, token refresh, uninstall.

The flow (PROTOCOL §3), and who does what:

1. A BlameTrail admin asks for a connect link (``POST /api/v1/integrations/sentry/connect``): a
   URL on our host carrying a signed, expiring ``state`` that names their organization. Opening
   it stores the state in a cookie and redirects to the Sentry app's install page. (Sentry's
   redirect back carries only ``installationId``, ``code`` and ``orgSlug``, so the cookie is what
   ties the browser's return to the organization that started it.)
2. Sentry sends ``installation.created`` (with the grant ``code``) to ingest, and redirects the
   browser to ``GET /integrations/sentry/oauth/callback``. Either may come first: both call
   :meth:`OAuth.claim`, which exchanges the grant **once** under a per-installation advisory lock.
   The second caller finds the exchanged grant (same code hash) and goes on with it.
3. The callback verifies the installation (``PUT {"status": "installed"}``; its answer names the
   Sentry organization authoritatively) and binds it to the organization of the state: a new
   ``oauth`` connection, or the existing one of that Sentry organization (a reinstall keeps the
   connection id, so its mappings resume).
4. The token keeper — one owner across replicas, a session advisory lock — refreshes each token
   an hour before its 8 h expiry, and at once when a reader (the enricher) reported a rejected
   token on ``oauth-refresh-requests``. Refresh is single use and deletes the old pair, so the
   keeper commits ``refresh_started_at`` *before* the call: found set later, the outcome is
   unknown and the JWT-bearer grant recovers a fresh pair. Each new token goes out encrypted on
   ``cp-connections``.
5. ``installation.deleted``: the connection is disabled and its tokens wiped; its mappings stay.

Tokens are Fernet-encrypted at rest and on Kafka; codes are never stored (only their SHA-256).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import html
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import orjson
import psycopg
from aiokafka import ConsumerRecord
from blametrail_common.crypto import SecretBox, SecretBoxError
from blametrail_common.events import DecodeError, decode
from blametrail_common.events.installations import (
    SentryInstallationV1,
    TokenRefreshRequestedV1,
    token_fingerprint,
)
from blametrail_common.settings import PREFIX, BaseBlametrailSettings
from pydantic import Field
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from blametrail_mappings_api.repository import Conn, Pool, Row, publish_connection
from blametrail_mappings_api.sentry_app import (
    SentryApp,
    SentryAuthRefused,
    SentryUnavailable,
    TokenPair,
)

__all__ = ["ConnectState", "OAuth", "OAuthRefused", "OAuthSettings", "oauth_routes"]

log = logging.getLogger(__name__)
COOKIE = "bt_sentry_connect"
GRANT_LIFE = timedelta(minutes=10)  # Sentry's grant life; also our window to bind an exchange
KEEPER_LOCK = 0x6274_6B70  # "btkp": one token keeper at a time


class OAuthSettings(BaseBlametrailSettings):
    sentry_url: str = Field(default="https://sentry.io", validation_alias=f"{PREFIX}SENTRY_URL")
    """Sentry (SaaS or self-hosted) as the public app sees it: API, install page."""
    client_id: str = Field(default="", validation_alias=f"{PREFIX}SENTRY_CLIENT_ID")
    """The public app's client id; empty: OAuth installs are off (internal integrations only)."""
    app_slug: str = Field(default="blametrail", validation_alias=f"{PREFIX}SENTRY_APP_SLUG")
    connect_ttl_s: int = Field(default=900, validation_alias=f"{PREFIX}API_CONNECT_LINK_TTL_S")
    refresh_margin_s: int = Field(
        default=3600, validation_alias=f"{PREFIX}API_OAUTH_REFRESH_MARGIN_S"
    )
    """Refresh a token this long before its expiry (Sentry's tokens live 8 h)."""
    check_s: float = Field(default=5.0, validation_alias=f"{PREFIX}API_OAUTH_CHECK_S")
    group_id: str = Field(
        default="blametrail-api-oauth", validation_alias=f"{PREFIX}API_OAUTH_GROUP"
    )


class OAuthRefused(Exception):
    """A request we turn down: ``status`` and a message for the person in the browser."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# -- connect state (pure) ------------------------------------------------------------------------
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


def _sha(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


# -- the service ---------------------------------------------------------------------------------
@dataclass
class OAuth:
    pool: Pool
    box: SecretBox
    app: SentryApp
    settings: OAuthSettings
    clock: Callable[[], float] = time.time
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    owner: bool = False
    refreshes: int = 0
    recoveries: int = 0
    installation_events: int = 0

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    @contextlib.asynccontextmanager
    async def _locked(self, installation: str) -> AsyncIterator[Conn]:
        """A connection holding the installation's session advisory lock (autocommit: what
        it commits inside stays committed even if the caller fails after). The lock is taken
        inside ``try``: a caller cancelled just as it was granted still releases it."""
        key = f"sentry-installation:{installation}"
        async with self.pool.connection() as conn:
            await conn.set_autocommit(True)
            await conn.execute("SET lock_timeout = '30s'")
            try:
                await conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))
                yield conn
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))
                await conn.execute("RESET lock_timeout")
                await conn.set_autocommit(False)

    async def claim(self, installation: str, code: str, org_slug: str | None = None) -> Row:
        """Exchange the grant once; the installation row (status ``exchanged`` or ``bound``).

        Only the grant that was exchanged gets the result back, and only within the grant's own
        ten minutes: a code seen later (browser history, a log) binds nothing. Another code for
        an installation that has one in use or in doubt is refused without touching the row.
        """
        code_sha = _sha(code)
        async with self._locked(installation) as conn:
            row = await _one(
                conn, "SELECT * FROM sentry_installations WHERE uuid = %s", installation
            )
            same_grant = row is not None and row["code_sha256"] == code_sha
            if row is not None and row["status"] in ("bound", "deleted"):
                if same_grant and row["status"] == "bound":
                    return row  # a replay of the bound grant: the binding decides who may see it
                raise OAuthRefused(409, f"installation {installation} is {row['status']} already")
            if row is not None and row["status"] == "exchanged":
                if same_grant and self._fresh(row["exchanged_at"]):
                    return row  # the race's second caller: nothing to exchange
                raise OAuthRefused(409, "this install code was used already; install again")
            in_doubt = row is not None and row["exchange_started_at"] is not None
            if in_doubt and not same_grant:
                raise OAuthRefused(409, "another install code of this installation is in use")
            # A call for this very grant went out before and never came back: Sentry may have
            # used the grant, so ask for a pair with the JWT-bearer grant instead.
            await conn.execute(
                "INSERT INTO sentry_installations"
                " (uuid, sentry_org_slug, status, code_sha256, exchange_started_at)"
                " VALUES (%s, %s, 'pending', %s, %s)"
                " ON CONFLICT (uuid) DO UPDATE SET code_sha256 = EXCLUDED.code_sha256,"
                " exchange_started_at = EXCLUDED.exchange_started_at,"
                " sentry_org_slug = coalesce(EXCLUDED.sentry_org_slug,"
                " sentry_installations.sentry_org_slug), updated_at = now()",
                (installation, org_slug, code_sha, self.now()),
            )
            try:
                if in_doubt:
                    self.recoveries += 1
                    pair = await self.app.recover(installation, self.clock())
                else:
                    pair = await self.app.exchange(installation, code)
            except SentryAuthRefused:
                if not in_doubt:  # refused for good: the call is no longer in doubt
                    await conn.execute(
                        "UPDATE sentry_installations SET exchange_started_at = NULL"
                        " WHERE uuid = %s",
                        (installation,),
                    )
                raise
            log.info("sentry grant exchanged", extra={"installation": installation})
            stored = await _one(
                conn,
                "UPDATE sentry_installations SET status = 'exchanged', exchange_started_at = NULL,"
                " exchanged_at = %s, auth_token_enc = %s, refresh_token_enc = %s,"
                " token_expires_at = %s, updated_at = now() WHERE uuid = %s RETURNING *",
                self.now(),
                *self._enc(pair),
                installation,
            )
            assert stored is not None
            return stored

    def _fresh(self, exchanged_at: datetime | None) -> bool:
        """Within the grant's ten-minute life: the window in which an exchange may be bound."""
        return exchanged_at is not None and self.now() - exchanged_at < GRANT_LIFE

    async def prepare(self, installation: str, code: str, org: str) -> Row:
        """The redirect: claim the grant and verify the installation (whose answer names the
        Sentry organization, recorded on the row). The binding waits for :meth:`confirm`."""
        row = await self.claim(installation, code)
        if row["status"] == "bound":
            await self._bound_connection(row, org)  # refuses another organization
            return row
        try:
            doc = await self.app.verify(installation, self._dec(row["auth_token_enc"]))
        except SentryAuthRefused as exc:
            raise OAuthRefused(
                502, f"Sentry refused to verify the installation: {exc.detail}"
            ) from None
        slug = (doc.get("organization") or {}).get("slug") or row["sentry_org_slug"]
        if not slug:
            raise OAuthRefused(502, "Sentry did not say which organization installed the app")
        async with self.pool.connection() as conn:
            verified = await _one(
                conn,
                "UPDATE sentry_installations SET sentry_org_slug = %s, verified_at = %s"
                " WHERE uuid = %s RETURNING *",
                str(slug),
                self.now(),
                installation,
            )
            await conn.commit()
        assert verified is not None
        return verified

    async def confirm(self, installation: str, org: str) -> Row:
        """Bind the verified installation to ``org`` (the person confirmed it)."""
        async with self.pool.connection() as conn:
            row = await _one(
                conn, "SELECT * FROM sentry_installations WHERE uuid = %s", installation
            )
        if row is not None and row["status"] == "bound":
            return await self._bound_connection(row, org)
        if row is None or row["status"] != "exchanged" or row["verified_at"] is None:
            raise OAuthRefused(409, "this installation is not ready to connect; install again")
        if not self._fresh(row["exchanged_at"]):
            raise OAuthRefused(409, "this install took longer than ten minutes; install again")
        return await self._bind(installation, org, str(row["sentry_org_slug"]))

    async def org_slug(self, org: str) -> str:
        async with self.pool.connection() as conn:
            row = await _one(conn, "SELECT slug FROM organizations WHERE id = %s", org)
        return str(row["slug"]) if row else org

    async def _bound_connection(self, row: Row, org: str) -> Row:
        async with self.pool.connection() as conn:
            found = await _one(
                conn, "SELECT * FROM sentry_connections WHERE id = %s", row["connection_id"]
            )
        if found is None or str(found["org_id"]) != org:
            raise OAuthRefused(409, "this installation is connected to another organization")
        return found

    async def _bind(self, installation: str, org: str, slug: str) -> Row:
        async with self._locked(installation) as conn, conn.transaction():
            inst = await _one(
                conn, "SELECT * FROM sentry_installations WHERE uuid = %s FOR UPDATE", installation
            )
            if inst is None or inst["status"] == "deleted":
                raise OAuthRefused(409, "the installation was removed in Sentry meanwhile")
            if inst["status"] == "bound":
                return await self._bound_connection(inst, org)
            existing = await _one(
                conn,
                "SELECT * FROM sentry_connections WHERE org_id = %s AND sentry_org_slug = %s"
                " FOR UPDATE",
                org,
                slug,
            )
            if existing is not None and existing["mode"] != "oauth":
                raise OAuthRefused(
                    409, f"Sentry organization {slug!r} is connected as an internal integration"
                )
            tokens = (inst["auth_token_enc"], inst["refresh_token_enc"], inst["token_expires_at"])
            if existing is not None:  # a reinstall: same connection, so its mappings resume
                row = await _one(
                    conn,
                    "UPDATE sentry_connections SET installation_uuid = %s, auth_token_enc = %s,"
                    " refresh_token_enc = %s, token_expires_at = %s, enabled = true,"
                    " refresh_started_at = NULL, refresh_requested_at = NULL, updated_at = now()"
                    " WHERE id = %s RETURNING *",
                    installation,
                    *tokens,
                    existing["id"],
                )
            else:
                row = await _one(
                    conn,
                    "INSERT INTO sentry_connections (id, org_id, mode, sentry_org_slug,"
                    " api_base_url, installation_uuid, auth_token_enc, refresh_token_enc,"
                    " token_expires_at) VALUES (%s, %s, 'oauth', %s, %s, %s, %s, %s, %s)"
                    " RETURNING *",
                    uuid.uuid4(),
                    org,
                    slug,
                    self.settings.sentry_url,
                    installation,
                    *tokens,
                )
            assert row is not None
            await conn.execute(
                "UPDATE sentry_installations SET status = 'bound', connection_id = %s,"
                " sentry_org_slug = %s, verified_at = now(), auth_token_enc = NULL,"
                " refresh_token_enc = NULL, token_expires_at = NULL, updated_at = now()"
                " WHERE uuid = %s",
                (row["id"], slug, installation),
            )
            await publish_connection(conn, row)
            log.info(
                "sentry installation bound",
                extra={"installation": installation, "connection_id": str(row["id"])},
            )
            return row

    async def uninstall(self, installation: str, connection_id: str | None = None) -> Row | None:
        """Disable the installation's connection and wipe its tokens; mappings are kept."""
        async with self._locked(installation) as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO sentry_installations (uuid, status) VALUES (%s, 'deleted')"
                " ON CONFLICT (uuid) DO UPDATE SET status = 'deleted', auth_token_enc = NULL,"
                " refresh_token_enc = NULL, token_expires_at = NULL, updated_at = now()",
                (installation,),
            )
            # An internal integration's webhook names its connection; the public app's, its
            # installation.
            by_id = _as_uuid(connection_id) if connection_id else None
            row = await _one(
                conn,
                "UPDATE sentry_connections SET enabled = false, auth_token_enc = NULL,"
                " refresh_token_enc = NULL, token_expires_at = NULL, refresh_started_at = NULL,"
                " refresh_requested_at = NULL, updated_at = now()"
                " WHERE id = %s OR (%s::uuid IS NULL AND installation_uuid = %s) RETURNING *",
                by_id,
                by_id,
                installation,
            )
            if row is not None:
                await publish_connection(conn, row)
            log.info("sentry installation deleted", extra={"installation": installation})
            return row

    # -- token refresh (the keeper) --------------------------------------------------------------
    async def request_refresh(self, connection_id: str, rejected: str) -> bool:
        """Mark an early refresh when ``rejected`` names the current token (else it is moot)."""
        async with self.pool.connection() as conn, conn.transaction():
            row = await _one(
                conn,
                "SELECT auth_token_enc FROM sentry_connections WHERE id = %s AND mode = 'oauth'"
                " AND enabled AND auth_token_enc IS NOT NULL FOR UPDATE",
                _as_uuid(connection_id),
            )
            if row is None or token_fingerprint(self._dec(row["auth_token_enc"])) != rejected:
                return False
            await conn.execute(
                "UPDATE sentry_connections SET refresh_requested_at = %s WHERE id = %s",
                (self.now(), _as_uuid(connection_id)),
            )
        self.wake.set()
        return True

    async def due(self) -> list[str]:
        """Connections to refresh now: expiring within the margin, asked for, or interrupted."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT id FROM sentry_connections WHERE mode = 'oauth' AND enabled"
                " AND auth_token_enc IS NOT NULL AND (token_expires_at < %s"
                " OR refresh_requested_at IS NOT NULL OR refresh_started_at IS NOT NULL)"
                " ORDER BY token_expires_at",
                (self.now() + timedelta(seconds=self.settings.refresh_margin_s),),
            )
            return [str(r["id"]) for r in await cur.fetchall()]

    async def refresh(self, connection_id: str) -> Row | None:
        """Refresh one connection's pair (call only as the keeper: refreshes must not overlap)."""
        async with self.pool.connection() as conn:
            async with conn.transaction():
                row = await _one(
                    conn,
                    "SELECT * FROM sentry_connections WHERE id = %s AND mode = 'oauth'"
                    " AND enabled FOR UPDATE",
                    connection_id,
                )
                if row is None or row["installation_uuid"] is None:
                    return None
                await conn.execute(
                    "UPDATE sentry_connections SET refresh_started_at = %s WHERE id = %s",
                    (self.now(), connection_id),
                )
            installation = str(row["installation_uuid"])
            pair: TokenPair | None = None
            if row["refresh_started_at"] is None and row["refresh_token_enc"] is not None:
                try:
                    pair = await self.app.refresh(installation, self._dec(row["refresh_token_enc"]))
                except SentryAuthRefused as exc:  # e.g. used by a refresh whose answer we lost
                    log.warning(
                        "refresh token refused; recovering with the JWT-bearer grant",
                        extra={"connection_id": connection_id, "status": exc.status},
                    )
            if pair is None:
                self.recoveries += 1
                pair = await self.app.recover(installation, self.clock())
            async with conn.transaction():
                saved = await _one(
                    conn,
                    "UPDATE sentry_connections SET auth_token_enc = %s, refresh_token_enc = %s,"
                    " token_expires_at = %s, refresh_started_at = NULL,"
                    " refresh_requested_at = NULL, updated_at = now()"
                    " WHERE id = %s AND enabled AND installation_uuid = %s RETURNING *",
                    *self._enc(pair),
                    connection_id,
                    installation,
                )
                if saved is not None:
                    await publish_connection(conn, saved)
            self.refreshes += 1
            log.info(
                "sentry token refreshed",
                extra={"connection_id": connection_id, "expires_at": pair.expires_at.isoformat()},
            )
            return saved

    async def keep(self, stop: asyncio.Event, dsn: str) -> None:
        """Be the token keeper while holding :data:`KEEPER_LOCK`; stand by otherwise."""
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as lock:
                    cur = await lock.execute("SELECT pg_try_advisory_lock(%s)", (KEEPER_LOCK,))
                    got = await cur.fetchone()
                    self.owner = bool(got and got[0])
                    while self.owner and not stop.is_set():
                        await self._refresh_due()
                        await _wait_any(stop, self.wake, self.settings.check_s)
                        self.wake.clear()
                        await lock.execute("SELECT 1")  # still holding the lock?
            except (psycopg.Error, OSError) as exc:
                log.warning("token keeper lost its database session", extra={"error": str(exc)})
            except Exception:
                log.exception("token keeper failed; starting over")
            self.owner = False
            await _wait_any(stop, asyncio.Event(), self.settings.check_s)

    async def _refresh_due(self) -> None:
        for connection_id in await self.due():
            try:
                await self.refresh(connection_id)
            except (SentryAuthRefused, SentryUnavailable) as exc:
                log.error(
                    "sentry token refresh failed; retrying at the next check",
                    extra={"connection_id": connection_id, "error": str(exc)},
                )
            except psycopg.Error:
                raise  # the keeper's session may be gone: let keep() start over
            except (
                Exception
            ):  # one bad connection (an undecryptable token...) must not stop the rest
                log.exception("sentry token refresh failed", extra={"connection_id": connection_id})

    # -- Kafka handlers --------------------------------------------------------------------------
    async def handle(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """``sentry-installations`` and ``oauth-refresh-requests`` (one consumer, both topics)."""
        for record in records:
            if record.value is None:
                continue
            try:
                payload = decode(record.value).payload
            except DecodeError as exc:
                log.error("undecodable oauth record skipped", extra={"error": str(exc)})
                continue
            if isinstance(payload, TokenRefreshRequestedV1):
                await self.request_refresh(payload.connection_id, payload.rejected_token)
            elif isinstance(payload, SentryInstallationV1):
                await self._installation_event(payload)
                self.installation_events += 1

    async def _installation_event(self, event: SentryInstallationV1) -> None:
        if event.action == "deleted":
            await self.uninstall(event.installation_uuid, event.connection_id)
            return
        if event.code is None or event.connection_id is not None or not self.settings.client_id:
            return  # internal integrations are installed without a grant
        for attempt in range(3):
            try:
                await self.claim(event.installation_uuid, event.code, event.sentry_org_slug)
                return
            except (SentryAuthRefused, OAuthRefused) as exc:
                # Expired or replayed grants end here; the redirect may still finish the install.
                log.warning(
                    "sentry grant not exchanged",
                    extra={"installation": event.installation_uuid, "error": str(exc)},
                )
                return
            except SentryUnavailable as exc:
                log.warning("sentry grant exchange failed", extra={"error": str(exc)})
                await asyncio.sleep(2**attempt)
        log.error(
            "sentry grant exchange gave up; the install redirect can still complete it",
            extra={"installation": event.installation_uuid},
        )

    # -- helpers -----------------------------------------------------------------------------------
    def _enc(self, pair: TokenPair) -> tuple[str, str, datetime]:
        return self.box.encrypt(pair.token), self.box.encrypt(pair.refresh_token), pair.expires_at

    def _dec(self, value: str) -> str:
        try:
            return self.box.decrypt(value)
        except SecretBoxError:
            log.error("a stored sentry token is undecryptable with BLAMETRAIL_SECRET_KEYS")
            raise


async def _one(conn: Conn, sql: str, *args: Any) -> Row | None:
    cur = await conn.execute(sql.encode(), args)
    return await cur.fetchone()


def _as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event, timeout_s: float) -> None:
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(wake.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


# -- browser routes ----------------------------------------------------------------------------
def _page(status: int, title: str, text: str) -> HTMLResponse:
    body = (
        f"<!doctype html><title>{html.escape(title)}</title>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"
    )
    return HTMLResponse(body, status)


def oauth_routes(oauth: OAuth | None, states: ConnectState, public_url: str) -> list[BaseRoute]:
    """``GET /integrations/sentry/connect``, ``GET /integrations/sentry/oauth/callback`` and
    ``POST /integrations/sentry/oauth/confirm``."""
    secure = public_url.startswith("https://")

    async def connect(request: Request) -> Response:
        if oauth is None:
            return _page(503, "Not configured", "OAuth installs are not configured here.")
        state = request.query_params.get("state")
        try:
            states.verify(state, oauth.clock())
        except OAuthRefused as exc:
            return _page(exc.status, "Cannot connect Sentry", exc.message)
        target = (
            f"{oauth.settings.sentry_url.rstrip('/')}/sentry-apps/"
            f"{oauth.settings.app_slug}/external-install/"
        )
        resp = RedirectResponse(target, 302)
        resp.set_cookie(
            COOKIE,
            str(state),
            max_age=oauth.settings.connect_ttl_s,
            path="/integrations/sentry",
            httponly=True,
            secure=secure,
            samesite="lax",
        )
        return resp

    async def callback(request: Request) -> Response:
        """Exchange and verify, then ask the person to confirm which BlameTrail organization
        gets this Sentry organization: a connect link someone else slipped into the browser
        names *their* organization, and this page says so before anything is bound."""
        if oauth is None:
            return _page(503, "Not configured", "OAuth installs are not configured here.")
        q = request.query_params
        installation, code = q.get("installationId"), q.get("code")
        if not installation or not code:
            return _page(400, "Cannot connect Sentry", "installationId and code are required")
        state = request.cookies.get(COOKIE)
        try:
            org = states.verify(state, oauth.clock())
            row = await oauth.prepare(installation, code, org)
        except OAuthRefused as exc:
            return _page(exc.status, "Cannot connect Sentry", exc.message)
        except SentryAuthRefused as exc:
            return _page(
                400,
                "Cannot connect Sentry",
                f"Sentry refused the install code ({exc.detail}). Install again from BlameTrail.",
            )
        except SentryUnavailable:
            return _page(502, "Cannot connect Sentry", "Sentry did not answer; reload to retry.")
        if row["status"] == "bound":
            return _connected(await oauth.confirm(installation, org))
        token = states.confirm_token(str(state), installation)
        sentry_org, bt_org = row["sentry_org_slug"], await oauth.org_slug(org)
        body = (
            "<!doctype html><title>Connect Sentry</title><h1>Connect Sentry</h1>"
            f"<p>Send incidents of Sentry organization <b>{html.escape(sentry_org)}</b> to the"
            f" BlameTrail organization <b>{html.escape(bt_org)}</b>?</p>"
            '<form method="post" action="/integrations/sentry/oauth/confirm">'
            f'<input type="hidden" name="installationId" value="{html.escape(installation)}">'
            f'<input type="hidden" name="token" value="{token}">'
            '<button type="submit">Connect</button></form>'
            "<p>If you did not start this from your BlameTrail organization, close this page"
            " and uninstall the app in Sentry.</p>"
        )
        return HTMLResponse(body, 200)

    async def confirm(request: Request) -> Response:
        if oauth is None:
            return _page(503, "Not configured", "OAuth installs are not configured here.")
        form = parse_qs((await request.body())[:4096].decode("utf-8", "replace"))
        installation = (form.get("installationId") or [""])[0]
        token = (form.get("token") or [""])[0]
        state = request.cookies.get(COOKIE)
        try:
            org = states.verify(state, oauth.clock())
            expected = states.confirm_token(str(state), installation)
            if not installation or not hmac.compare_digest(token.encode(), expected.encode()):
                raise OAuthRefused(400, "this confirmation is not valid; install again")
            row = await oauth.confirm(installation, org)
        except OAuthRefused as exc:
            return _page(exc.status, "Cannot connect Sentry", exc.message)
        return _connected(row)

    def _connected(row: Row) -> Response:
        resp = _page(
            200,
            "Sentry connected",
            f"Sentry organization {row['sentry_org_slug']} is connected"
            f" (connection {row['id']}). Map its projects to services to receive incidents.",
        )
        resp.delete_cookie(COOKIE, path="/integrations/sentry")
        return resp

    return [
        Route("/integrations/sentry/connect", connect, methods=["GET"]),
        Route("/integrations/sentry/oauth/callback", callback, methods=["GET"]),
        Route("/integrations/sentry/oauth/confirm", confirm, methods=["POST"]),
    ]
