"""Deploys: recorded through the API (or imported from Sentry), published on ``deploys``. The id
is derived from what the deploy is (organization, service, environment, version, start), so the
same deploy posted again updates its row instead of adding one."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from blametrail_common.events import new_event
from blametrail_common.events.deploys import DeployRecordedV1, deploy_id_for

from blametrail_mappings_api.store import db
from blametrail_mappings_api.store.db import Page, Pool, Row
from blametrail_mappings_api.store.outbox import enqueue

__all__ = ["DeployStore"]


class DeployStore:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def create(self, org: str, body: dict[str, Any]) -> tuple[Row, bool]:
        """Record a deploy; the same deploy posted again updates it. Returns (row, created)."""
        start = body["started_at"] or body["finished_at"]
        ident = deploy_id_for(org, body["service_id"], body["environment"], body["version"], start)
        values = {"id": ident, "org_id": org, **body}
        cols = ", ".join(values)
        marks = ", ".join(["%s"] * len(values))
        updates = ", ".join(f"{k} = EXCLUDED.{k}" for k in body if k != "service_id")
        async with db.transaction(self.pool) as conn:
            await db.must_own(conn, "services", org, body["service_id"], "service_id")
            cur = await conn.execute(
                f"INSERT INTO deploys ({cols}) VALUES ({marks}) ON CONFLICT (id) DO UPDATE"  # noqa: S608
                f" SET {updates}, updated_at = now() RETURNING *, (xmax = 0) AS created".encode(),
                list(values.values()),
            )
            row: Row | None = await cur.fetchone()
            assert row is not None
            created = bool(row.pop("created"))
            state = DeployRecordedV1(
                deploy_id=str(row["id"]),
                tenant_id=str(row["org_id"]),
                service_id=str(row["service_id"]),
                version=row["version"],
                environment=row["environment"],
                commit_sha=row["commit_sha"],
                started_at=row["started_at"],
                finished_at=row["finished_at"],
                author=row["author"],
                url=row["url"],
                changed_paths=row["changed_paths"],
                source=row["source"],
                recorded_at=row["updated_at"],
            )
            await enqueue(
                conn, "deploys", new_event(state, key=state.deploy_id, tenant=state.tenant_id)
            )
            return row, created

    async def list(
        self,
        org: str,
        cursor: str | None,
        limit: int,
        service_id: str | None,
        since: datetime | None,
    ) -> Page:
        where, args = "", list[Any]()
        if service_id is not None:
            where += " AND service_id = %s"
            args.append(db.uuid_or_404(service_id, "service_id"))
        if since is not None:
            where += " AND coalesce(finished_at, started_at) >= %s"
            args.append(since)
        return await db.page(self.pool, "deploys", org, cursor, limit, where, tuple(args))
