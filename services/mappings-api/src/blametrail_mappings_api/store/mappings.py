"""Project mappings: which Sentry project's incidents go to which service. State goes out on
``cp-mappings``, keyed by connection and project slug."""

from __future__ import annotations

import uuid
from typing import Any

from blametrail_common.events import MappingStateV1, mapping_key, new_event

from blametrail_mappings_api.errors import Conflict
from blametrail_mappings_api.store import db
from blametrail_mappings_api.store.db import Conn, Page, Pool, Row
from blametrail_mappings_api.store.outbox import enqueue, enqueue_tombstone

__all__ = ["MappingStore"]


class MappingStore:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def list(
        self,
        org: str,
        cursor: str | None,
        limit: int,
        service_id: str | None,
        active: bool | None,
        connection_id: str | None,
    ) -> Page:
        where, args = [], []
        for column, value in (
            ("service_id", service_id),
            ("active", active),
            ("connection_id", connection_id),
        ):
            if value is not None:
                where.append(f" AND {column} = %s")
                args.append(value if isinstance(value, bool) else db.uuid_or_404(value, column))
        return await db.page(
            self.pool, "project_mappings", org, cursor, limit, "".join(where), tuple(args)
        )

    async def get(self, org: str, mapping_id: str) -> Row:
        return await db.get(self.pool, "project_mappings", org, mapping_id, "mapping")

    async def create(self, org: str, body: dict[str, Any]) -> Row:
        """Map a project; :class:`Conflict` (with the existing mapping) if it is mapped."""
        async with db.transaction(self.pool) as conn:
            await db.must_own(
                conn, "sentry_connections", org, body["connection_id"], "connection_id"
            )
            await db.must_own(conn, "services", org, body["service_id"], "service_id")
            cur = await conn.execute(
                "SELECT * FROM project_mappings WHERE connection_id = %s AND sentry_project_slug = %s",
                (body["connection_id"], body["sentry_project_slug"]),
            )
            existing = await cur.fetchone()
            if existing:
                raise Conflict(
                    f"Sentry project {body['sentry_project_slug']!r} is already mapped to a service",
                    existing,
                )
            row = await db.insert_unique(
                conn,
                "project_mappings",
                {"id": uuid.uuid4(), "org_id": org, **body},
                "Sentry project is already mapped",
            )
            await _publish(conn, row)
            return row

    async def update(self, org: str, mapping_id: str, changes: dict[str, Any]) -> Row:
        async with db.transaction(self.pool) as conn:
            if changes.get("service_id") is not None:
                await db.must_own(conn, "services", org, changes["service_id"], "service_id")
            row = await db.update(
                conn,
                "project_mappings",
                org,
                mapping_id,
                {k: v for k, v in changes.items() if v is not None},
                "mapping",
                "",
            )
            await _publish(conn, row)
            return row

    async def delete(self, org: str, mapping_id: str) -> None:
        async with db.transaction(self.pool) as conn:
            row = await db.get_in(conn, "project_mappings", org, mapping_id, "mapping", lock=True)
            await conn.execute("DELETE FROM project_mappings WHERE id = %s", (row["id"],))
            await enqueue_tombstone(
                conn,
                "cp-mappings",
                mapping_key(str(row["connection_id"]), row["sentry_project_slug"]),
            )


async def _publish(conn: Conn, row: Row) -> None:
    state = MappingStateV1(
        mapping_id=str(row["id"]),
        tenant_id=str(row["org_id"]),
        connection_id=str(row["connection_id"]),
        sentry_project_slug=row["sentry_project_slug"],
        sentry_project_id=row["sentry_project_id"],
        service_id=str(row["service_id"]),
        active=row["active"],
        updated_at=row["updated_at"],
    )
    key = mapping_key(state.connection_id, state.sentry_project_slug)
    await enqueue(conn, "cp-mappings", new_event(state, key=key, tenant=state.tenant_id))
