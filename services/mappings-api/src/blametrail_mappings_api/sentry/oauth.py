"""Public (OAuth) installs: connect links, grant exchange, binding, token refresh, uninstall.

The flow (PROTOCOL §3), and who does what:

1. A BlameTrail admin asks for a connect link (``POST /api/v1/integrations/sentry/connect``): a
   URL on our host carrying a signed, expiring ``state`` that names their organization. Opening
   it stores the state in a cookie and redirects to the Sentry app's install page. (Sentry's
   redirect back carries only ``installationId``, ``code`` and ``orgSlug``, so the cookie is what
   ties the browser's return to the organization that started it.)
2. Sentry sends ``installation.created`` (with the grant ``code``) to ingest, and redirects the
   browser to ``GET /integrations/sentry/oauth/callback``. Either may come first: both call
   :meth:`OAuth.claim` (:mod:`.oauth_flow`), which exchanges the grant **once** under a
   per-installation advisory lock. The second caller finds the exchanged grant (same code hash)
   and goes on with it.
3. The callback verifies the installation (``PUT {"status": "installed"}``; its answer names the
   Sentry organization authoritatively) and binds it to the organization of the state: a new
   ``oauth`` connection, or the existing one of that Sentry organization (a reinstall keeps the
   connection id, so its mappings resume): :mod:`.binding`.
4. The token keeper (:mod:`.token_keeper`) — one owner across replicas, a session advisory
   lock — refreshes each token an hour before its 8 h expiry, and at once when a reader (the
   enricher) reported a rejected token on ``oauth-refresh-requests``. Refresh is single use and
   deletes the old pair, so the keeper commits ``refresh_started_at`` *before* the call: found
   set later, the outcome is unknown and the JWT-bearer grant recovers a fresh pair. Each new
   token goes out encrypted on ``cp-connections``.
5. ``installation.deleted``: the connection is disabled and its tokens wiped; its mappings stay.

Tokens are Fernet-encrypted at rest and on Kafka; codes are never stored (only their SHA-256).
:class:`OAuth` is the one object the rest of the service holds: the flow, the binding and the
keeper over one :class:`~.oauth_core.OAuthCore`, and the consumer of ``sentry-installations``
and ``oauth-refresh-requests``. The browser's side is :mod:`.oauth_routes`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import ConsumerRecord
from blametrail_common.events import DecodeError, decode
from blametrail_common.events.installations import SentryInstallationV1, TokenRefreshRequestedV1

from blametrail_mappings_api.sentry.client import SentryAuthRefused, SentryUnavailable
from blametrail_mappings_api.sentry.oauth_core import OAuthCore
from blametrail_mappings_api.sentry.oauth_flow import InstallFlow
from blametrail_mappings_api.sentry.state import OAuthRefused
from blametrail_mappings_api.sentry.token_keeper import TokenKeeper
from blametrail_mappings_api.store.db import Row

__all__ = ["OAuth"]

log = logging.getLogger(__name__)


@dataclass
class OAuth(OAuthCore):
    """Public (OAuth) installs: ``OAuth(pool, box, app, settings[, clock])``. The counters and
    the clock are :class:`~.oauth_core.OAuthCore`'s, shared by every part."""

    flow: InstallFlow = field(init=False, repr=False)
    keeper: TokenKeeper = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.flow, self.keeper = InstallFlow(self), TokenKeeper(self)

    # -- the install (oauth_flow, binding) -------------------------------------------------------
    async def claim(self, installation: str, code: str, org_slug: str | None = None) -> Row:
        return await self.flow.claim(installation, code, org_slug)

    async def prepare(self, installation: str, code: str, org: str) -> Row:
        return await self.flow.prepare(installation, code, org)

    async def confirm(self, installation: str, org: str) -> Row:
        return await self.flow.confirm(installation, org)

    async def org_slug(self, org: str) -> str:
        return await self.flow.org_slug(org)

    async def uninstall(self, installation: str, connection_id: str | None = None) -> Row | None:
        return await self.flow.binding.uninstall(installation, connection_id)

    # -- the token keeper ------------------------------------------------------------------------
    async def request_refresh(self, connection_id: str, rejected: str) -> bool:
        return await self.keeper.request_refresh(connection_id, rejected)

    async def due(self) -> list[str]:
        return await self.keeper.due()

    async def refresh(self, connection_id: str) -> Row | None:
        return await self.keeper.refresh(connection_id)

    async def keep(self, stop: asyncio.Event, dsn: str) -> None:
        await self.keeper.keep(stop, dsn)

    async def _refresh_due(self) -> None:
        await self.keeper.refresh_due()

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
