"""An OAuth installation bound to (and unbound from) a BlameTrail organization's connection:
a new ``oauth`` connection, or the one that Sentry organization had (a reinstall keeps the
connection id, so its mappings resume); ``installation.deleted`` disables it and wipes its
tokens, keeping its mappings. Each change goes out on ``cp-connections`` in its transaction.

An internal connection has no install flow: it learns its installation uuid
(:func:`record_installation`) from what Sentry signed with its client secret: the webhooks that
come to its own URL (the normalizer reports each installation a webhook names that the
connection does not know yet: ``sentry.installation_seen`` on ``sentry-installations``) and,
until one came, the first signed UI-component POST (its body, ``installationId`` included, is
covered by the signature; a GET's query is not, so a GET never teaches). How it was learned is
recorded (``installation_source``): a webhook's binding replaces another connection's that came
from a UI call (issue 17 L1: a UI call cannot claim an installation for good)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

import psycopg
from aiokafka import ConsumerRecord
from blametrail_common.events import DecodeError, decode
from blametrail_common.events.installations import SentryInstallationSeenV1

from blametrail_mappings_api.sentry.oauth_core import OAuthCore, as_uuid, one
from blametrail_mappings_api.sentry.state import OAuthRefused
from blametrail_mappings_api.store.connections import publish_connection
from blametrail_mappings_api.store.db import Pool, Row

MAX_INSTALLATION_ID = 64  # Sentry's are uuids; a longer one is never stored

__all__ = ["Binding", "InstallationLearner", "record_installation"]

log = logging.getLogger(__name__)


class Binding:
    def __init__(self, core: OAuthCore) -> None:
        self.core = core

    async def bound_connection(self, row: Row, org: str) -> Row:
        """The connection a bound installation ``row`` has, if it is ``org``'s (409 otherwise)."""
        async with self.core.pool.connection() as conn:
            found = await one(
                conn, "SELECT * FROM sentry_connections WHERE id = %s", row["connection_id"]
            )
        if found is None or str(found["org_id"]) != org:
            raise OAuthRefused(409, "this installation is connected to another organization")
        return found

    async def bind(self, installation: str, org: str, slug: str) -> Row:
        """Bind the exchanged ``installation`` (Sentry organization ``slug``) to ``org``."""
        async with self.core.locked(installation) as conn, conn.transaction():
            inst = await one(
                conn, "SELECT * FROM sentry_installations WHERE uuid = %s FOR UPDATE", installation
            )
            if inst is None or inst["status"] == "deleted":
                raise OAuthRefused(409, "the installation was removed in Sentry meanwhile")
            if inst["status"] == "bound":
                return await self.bound_connection(inst, org)
            existing = await one(
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
                row = await one(
                    conn,
                    "UPDATE sentry_connections SET installation_uuid = %s,"
                    " installation_source = 'oauth', auth_token_enc = %s,"
                    " refresh_token_enc = %s, token_expires_at = %s, enabled = true,"
                    " refresh_started_at = NULL, refresh_requested_at = NULL, updated_at = now()"
                    " WHERE id = %s RETURNING *",
                    installation,
                    *tokens,
                    existing["id"],
                )
            else:
                row = await one(
                    conn,
                    "INSERT INTO sentry_connections (id, org_id, mode, sentry_org_slug,"
                    " api_base_url, installation_uuid, installation_source, auth_token_enc,"
                    " refresh_token_enc, token_expires_at)"
                    " VALUES (%s, %s, 'oauth', %s, %s, %s, 'oauth', %s, %s, %s)"
                    " RETURNING *",
                    uuid.uuid4(),
                    org,
                    slug,
                    self.core.settings.sentry_url,
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
        async with self.core.locked(installation) as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO sentry_installations (uuid, status) VALUES (%s, 'deleted')"
                " ON CONFLICT (uuid) DO UPDATE SET status = 'deleted', auth_token_enc = NULL,"
                " refresh_token_enc = NULL, token_expires_at = NULL, updated_at = now()",
                (installation,),
            )
            # An internal integration's webhook names its connection; the public app's, its
            # installation.
            by_id = as_uuid(connection_id) if connection_id else None
            row = await one(
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


async def record_installation(
    pool: Pool, connection_id: str, installation: str, *, replace: bool
) -> Row | None:
    """Record ``installation`` as the uuid of internal connection ``connection_id``; the row as it
    is afterwards (``None``: no such enabled internal connection). ``replace``: a webhook signed
    for this connection names it, so it wins over an older uuid (the integration was made anew);
    else (a UI call) only an unknown uuid is filled in. An installation another connection holds
    is not taken from it (logged; the row is returned unchanged), unless ``replace`` and that
    connection learned it from a UI call: then it is cleared there (and told on cp-connections)."""
    ident = as_uuid(connection_id)
    if ident is None:
        return None
    try:
        return await _record(pool, ident, installation, replace)
    except psycopg.errors.UniqueViolation:  # another connection took it meanwhile
        log.warning(
            "installation already held by another connection; not recorded",
            extra={"installation": installation, "connection_id": connection_id},
        )
        async with pool.connection() as conn:
            return await one(conn, "SELECT * FROM sentry_connections WHERE id = %s", ident)


async def _record(pool: Pool, ident: uuid.UUID, installation: str, replace: bool) -> Row | None:
    async with pool.connection() as conn, conn.transaction():
        row = await one(
            conn,
            "SELECT * FROM sentry_connections WHERE id = %s AND mode = 'internal' AND enabled"
            " FOR UPDATE",
            ident,
        )
        source = "webhook" if replace else "ui_call"
        if row is None:
            return row
        if row["installation_uuid"] == installation:
            if replace and row["installation_source"] == "ui_call":  # now proven by a webhook
                await conn.execute(
                    "UPDATE sentry_connections SET installation_source = 'webhook' WHERE id = %s",
                    (ident,),
                )
            return row
        if row["installation_uuid"] is not None and not replace:
            return row
        holder = await one(
            conn,
            "SELECT id, installation_source FROM sentry_connections WHERE installation_uuid = %s"
            " FOR UPDATE",
            installation,
        )
        if holder is not None and not (replace and holder["installation_source"] == "ui_call"):
            log.warning(
                "installation already held by another connection; not recorded",
                extra={"installation": installation, "connection_id": str(ident)},
            )
            return row
        if holder is not None:
            released = await one(
                conn,
                "UPDATE sentry_connections SET installation_uuid = NULL,"
                " installation_source = NULL, updated_at = now() WHERE id = %s RETURNING *",
                holder["id"],
            )
            assert released is not None
            await publish_connection(conn, released)
            log.warning(
                "installation taken by a webhook from a connection that learned it from a UI call",
                extra={
                    "installation": installation,
                    "connection_id": str(ident),
                    "released_connection_id": str(holder["id"]),
                },
            )
        row = await one(
            conn,
            "UPDATE sentry_connections SET installation_uuid = %s, installation_source = %s,"
            " updated_at = now() WHERE id = %s RETURNING *",
            installation,
            source,
            ident,
        )
        assert row is not None
        await publish_connection(conn, row)
    log.info(
        "sentry installation recorded for internal connection",
        extra={"installation": installation, "connection_id": str(ident)},
    )
    return row


class InstallationLearner:
    """The consumer of ``sentry-installations`` that records what internal connections'
    webhooks name (``sentry.installation_seen``); other records there are the OAuth flow's.
    Idempotent: a redelivered record finds the uuid recorded already."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.recorded = 0

    async def handle(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        for record in records:
            if record.value is None:
                continue
            try:
                seen = decode(record.value).payload
            except DecodeError as exc:
                log.error("undecodable installation record skipped", extra={"error": str(exc)})
                continue
            if not isinstance(seen, SentryInstallationSeenV1):
                continue
            if len(seen.installation_uuid) > MAX_INSTALLATION_ID:
                continue
            row = await record_installation(
                self.pool, seen.connection_id, seen.installation_uuid, replace=True
            )
            if row is not None and row["installation_uuid"] == seen.installation_uuid:
                self.recorded += 1
