"""Sentry connections (internal integrations here; OAuth ones come from
:mod:`~blametrail_mappings_api.sentry.oauth_flow`). Secrets are Fernet-encrypted at rest and
write-only; state goes out on ``cp-connections`` (:func:`publish_connection`)."""

from __future__ import annotations

import uuid
from typing import Any

from blametrail_common.crypto import SecretBox
from blametrail_common.events import ConnectionStateV1, new_event

from blametrail_mappings_api.errors import Conflict
from blametrail_mappings_api.store import db
from blametrail_mappings_api.store.db import Conn, Page, Pool, Row
from blametrail_mappings_api.store.outbox import enqueue, enqueue_tombstone

__all__ = ["ConnectionStore", "publish_connection"]


async def publish_connection(conn: Conn, row: Row) -> None:
    """Put a ``sentry_connections`` row's state on ``cp-connections`` (outbox, same transaction)."""
    state = ConnectionStateV1(
        connection_id=str(row["id"]),
        tenant_id=str(row["org_id"]),
        mode=row["mode"],
        enabled=row["enabled"],
        sentry_org_slug=row["sentry_org_slug"],
        api_base_url=row["api_base_url"],
        installation_uuid=row["installation_uuid"],
        client_secrets_enc=list(row["client_secrets_enc"]),
        auth_token_enc=row["auth_token_enc"],
        token_expires_at=row["token_expires_at"],
        updated_at=row["updated_at"],
        writeback=row.get("writeback", True),
    )
    await enqueue(
        conn, "cp-connections", new_event(state, key=state.connection_id, tenant=state.tenant_id)
    )


class ConnectionStore:
    def __init__(self, pool: Pool, box: SecretBox) -> None:
        self.pool, self.box = pool, box

    async def list(self, org: str, cursor: str | None, limit: int) -> Page:
        return await db.page(self.pool, "sentry_connections", org, cursor, limit, "", ())

    async def get(self, org: str, connection_id: str) -> Row:
        return await db.get(self.pool, "sentry_connections", org, connection_id, "connection")

    async def create(self, org: str, body: dict[str, Any]) -> Row:
        values = {
            "id": uuid.uuid4(),
            "org_id": org,
            "mode": body["mode"],
            "sentry_org_slug": body["sentry_org_slug"],
            "api_base_url": body["api_base_url"],
            "client_secrets_enc": [self.box.encrypt(body["client_secret"])],
            "auth_token_enc": self.box.encrypt(body["auth_token"]),
        }
        async with db.transaction(self.pool) as conn:
            row = await db.insert_unique(
                conn,
                "sentry_connections",
                values,
                f"Sentry organization {body['sentry_org_slug']!r} is already connected",
            )
            await publish_connection(conn, row)
            return row

    async def update(self, org: str, connection_id: str, patch: dict[str, Any]) -> Row:
        """Apply a patch; a new ``client_secret`` keeps the previous one valid (rotation) until
        ``retire_old_secrets``."""
        async with db.transaction(self.pool) as conn:
            current = await db.get_in(
                conn, "sentry_connections", org, connection_id, "connection", lock=True
            )
            changes: dict[str, Any] = {
                k: patch[k]
                for k in ("api_base_url", "enabled", "writeback")
                if patch.get(k) is not None
            }
            secrets = list(current["client_secrets_enc"])
            if patch.get("client_secret"):
                secrets = [
                    self.box.encrypt(patch["client_secret"]),
                    *secrets[:1],
                ]  # new + previous, for rotation
            if patch.get("retire_old_secrets"):
                secrets = secrets[:1]
            changes["client_secrets_enc"] = secrets
            if patch.get("auth_token"):
                changes["auth_token_enc"] = self.box.encrypt(patch["auth_token"])
            row = await db.update(
                conn, "sentry_connections", org, connection_id, changes, "connection", ""
            )
            await publish_connection(conn, row)
            return row

    async def delete(self, org: str, connection_id: str) -> None:
        """Delete a connection; :class:`Conflict` (naming them) while it has mappings."""
        async with db.transaction(self.pool) as conn:
            row = await db.get_in(
                conn, "sentry_connections", org, connection_id, "connection", lock=True
            )
            cur = await conn.execute(
                "SELECT sentry_project_slug FROM project_mappings WHERE connection_id = %s "
                "ORDER BY sentry_project_slug",
                (row["id"],),
            )
            slugs = [r["sentry_project_slug"] for r in await cur.fetchall()]
            if slugs:
                raise Conflict(
                    f"connection has mappings: {', '.join(slugs)}; delete them first", slugs
                )
            await conn.execute("DELETE FROM sentry_connections WHERE id = %s", (row["id"],))
            await enqueue_tombstone(conn, "cp-connections", str(row["id"]))
