"""An OAuth install, step by step (PROTOCOL §3; the whole flow is told in :mod:`.oauth`):
exchange the grant once (:meth:`InstallFlow.claim`), verify the installation with Sentry
(:meth:`~InstallFlow.prepare`), bind it once the person confirmed (:meth:`~InstallFlow.confirm`).
The binding itself, and uninstall, are :mod:`.binding`'s."""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timedelta

from blametrail_mappings_api.sentry.binding import Binding
from blametrail_mappings_api.sentry.client import SentryAuthRefused
from blametrail_mappings_api.sentry.oauth_core import OAuthCore, one
from blametrail_mappings_api.sentry.state import OAuthRefused
from blametrail_mappings_api.store.db import Row

__all__ = ["GRANT_LIFE", "InstallFlow"]

log = logging.getLogger(__name__)
GRANT_LIFE = timedelta(minutes=10)  # Sentry's grant life; also our window to bind an exchange


def _sha(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


class InstallFlow:
    def __init__(self, core: OAuthCore) -> None:
        self.core = core
        self.binding = Binding(core)

    async def claim(self, installation: str, code: str, org_slug: str | None = None) -> Row:
        """Exchange the grant once; the installation row (status ``exchanged`` or ``bound``).

        Only the grant that was exchanged gets the result back, and only within the grant's own
        ten minutes: a code seen later (browser history, a log) binds nothing. Another code for
        an installation that has one in use or in doubt is refused without touching the row.
        """
        core, code_sha = self.core, _sha(code)
        async with core.locked(installation) as conn:
            row = await one(
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
                (installation, org_slug, code_sha, core.now()),
            )
            try:
                if in_doubt:
                    core.recoveries += 1
                    pair = await core.app.recover(installation, core.clock())
                else:
                    pair = await core.app.exchange(installation, code)
            except SentryAuthRefused:
                if not in_doubt:  # refused for good: the call is no longer in doubt
                    await conn.execute(
                        "UPDATE sentry_installations SET exchange_started_at = NULL"
                        " WHERE uuid = %s",
                        (installation,),
                    )
                raise
            log.info("sentry grant exchanged", extra={"installation": installation})
            stored = await one(
                conn,
                "UPDATE sentry_installations SET status = 'exchanged', exchange_started_at = NULL,"
                " exchanged_at = %s, auth_token_enc = %s, refresh_token_enc = %s,"
                " token_expires_at = %s, updated_at = now() WHERE uuid = %s RETURNING *",
                core.now(),
                *core.enc(pair),
                installation,
            )
            assert stored is not None
            return stored

    def _fresh(self, exchanged_at: datetime | None) -> bool:
        """Within the grant's ten-minute life: the window in which an exchange may be bound."""
        return exchanged_at is not None and self.core.now() - exchanged_at < GRANT_LIFE

    async def prepare(self, installation: str, code: str, org: str) -> Row:
        """The redirect: claim the grant and verify the installation (whose answer names the
        Sentry organization, recorded on the row). The binding waits for :meth:`confirm`."""
        core = self.core
        row = await self.claim(installation, code)
        if row["status"] == "bound":
            await self.binding.bound_connection(row, org)  # refuses another organization
            return row
        try:
            doc = await core.app.verify(installation, core.dec(row["auth_token_enc"]))
        except SentryAuthRefused as exc:
            raise OAuthRefused(
                502, f"Sentry refused to verify the installation: {exc.detail}"
            ) from None
        slug = (doc.get("organization") or {}).get("slug") or row["sentry_org_slug"]
        if not slug:
            raise OAuthRefused(502, "Sentry did not say which organization installed the app")
        async with core.pool.connection() as conn:
            verified = await one(
                conn,
                "UPDATE sentry_installations SET sentry_org_slug = %s, verified_at = %s"
                " WHERE uuid = %s RETURNING *",
                str(slug),
                core.now(),
                installation,
            )
            await conn.commit()
        assert verified is not None
        return verified

    async def confirm(self, installation: str, org: str) -> Row:
        """Bind the verified installation to ``org`` (the person confirmed it)."""
        async with self.core.pool.connection() as conn:
            row = await one(
                conn, "SELECT * FROM sentry_installations WHERE uuid = %s", installation
            )
        if row is not None and row["status"] == "bound":
            return await self.binding.bound_connection(row, org)
        if row is None or row["status"] != "exchanged" or row["verified_at"] is None:
            raise OAuthRefused(409, "this installation is not ready to connect; install again")
        if not self._fresh(row["exchanged_at"]):
            raise OAuthRefused(409, "this install took longer than ten minutes; install again")
        return await self.binding.bind(installation, org, str(row["sentry_org_slug"]))

    async def org_slug(self, org: str) -> str:
        async with self.core.pool.connection() as conn:
            row = await one(conn, "SELECT slug FROM organizations WHERE id = %s", org)
        return str(row["slug"]) if row else org
