"""Services: what incidents are routed to. State goes out on ``cp-services``."""

from __future__ import annotations

import uuid
from typing import Any

from blametrail_common.events import ServiceStateV1, new_event

from blametrail_mappings_api.errors import Conflict
from blametrail_mappings_api.store import db
from blametrail_mappings_api.store.db import Conn, Page, Pool, Row
from blametrail_mappings_api.store.outbox import enqueue, enqueue_tombstone

__all__ = ["ServiceStore"]


class ServiceStore:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def list(self, org: str, cursor: str | None, limit: int) -> Page:
        return await db.page(self.pool, "services", org, cursor, limit, "", ())

    async def get(self, org: str, service_id: str) -> Row:
        return await db.get(self.pool, "services", org, service_id, "service")

    async def create(self, org: str, body: dict[str, Any]) -> Row:
        async with db.transaction(self.pool) as conn:
            row = await db.insert_unique(
                conn,
                "services",
                {"id": uuid.uuid4(), "org_id": org, **body},
                f"a service with slug {body['slug']!r} already exists",
            )
            await _publish(conn, row)
            return row

    async def update(self, org: str, service_id: str, changes: dict[str, Any]) -> Row:
        async with db.transaction(self.pool) as conn:
            row = await db.update(
                conn,
                "services",
                org,
                service_id,
                changes,
                "service",
                "a service with that slug already exists",
            )
            await _publish(conn, row)
            return row

    async def delete(self, org: str, service_id: str) -> None:
        """Delete a service; :class:`Conflict` (naming them) while mappings target it."""
        async with db.transaction(self.pool) as conn:
            row = await db.get_in(conn, "services", org, service_id, "service", lock=True)
            cur = await conn.execute(
                "SELECT id, sentry_project_slug FROM project_mappings WHERE service_id = %s ORDER BY sentry_project_slug",
                (row["id"],),
            )
            mappings = await cur.fetchall()
            if mappings:
                names = ", ".join(m["sentry_project_slug"] for m in mappings)
                raise Conflict(
                    f"service is the target of mappings: {names}; delete or move them first",
                    [
                        {"id": str(m["id"]), "sentry_project_slug": m["sentry_project_slug"]}
                        for m in mappings
                    ],
                )
            await conn.execute("DELETE FROM services WHERE id = %s", (row["id"],))
            await enqueue_tombstone(conn, "cp-services", str(row["id"]))


async def _publish(conn: Conn, row: Row) -> None:
    state = ServiceStateV1(
        service_id=str(row["id"]),
        tenant_id=str(row["org_id"]),
        slug=row["slug"],
        name=row["name"],
        description=row["description"],
        updated_at=row["updated_at"],
    )
    await enqueue(
        conn, "cp-services", new_event(state, key=state.service_id, tenant=state.tenant_id)
    )
