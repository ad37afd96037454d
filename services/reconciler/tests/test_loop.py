"""The service's loop on real Kafka and Postgres with the stand-in: a 401 during a sweep asks the
token keeper for a refresh and the next turn sweeps with the token it sent."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from typing import Any

import orjson
from blametrail_common.events import ConnectionStateV1, decode, new_event
from blametrail_common.events.installations import TokenRefreshRequestedV1, token_fingerprint
from blametrail_common.kafka import create_consumer
from blametrail_devstack.testkit import until
from blametrail_reconciler.loop import SweepLoop
from blametrail_reconciler.schedule import Schedule

ORG = "acme"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def _refresh_requests(p: Any) -> list[TokenRefreshRequestedV1]:
    consumer = create_consumer(p.kafka, ["oauth-refresh-requests"], group_id=None)
    await consumer.start()
    try:
        polled = await consumer.getmany(timeout_ms=1500)
        return [decode(r.value).payload for batch in polled.values() for r in batch]
    finally:
        await consumer.stop()


async def _sweeps(p: Any) -> list[tuple[str, str | None]]:
    rows = await p.rows(
        "SELECT outcome, error FROM reconcile_sweeps WHERE connection_id = %s ORDER BY started_at",
        p.connection_id,
    )
    return [(r[0], r[1]) for r in rows]


async def _publish_state(p: Any, state: ConnectionStateV1) -> None:
    await p.producer.send("cp-connections", new_event(state, key=state.connection_id))

    async def arrived() -> bool:
        now = p.connections.get(p.connection_id)
        return bool(now is not None and now.updated_at == state.updated_at)

    await until("the connection's new state", arrived, timeout_s=30)


async def test_a_401_asks_the_token_keeper_and_the_next_turn_sweeps_with_the_new_token(
    make_pipeline: Any,
) -> None:
    async with make_pipeline() as p:
        await p.open_issues(["9500001"])
        conn = p.connections.get(p.connection_id)
        old_token = p.connections.credentials(conn).token
        # an OAuth connection (the token keeper's), whose token Sentry no longer accepts
        await _publish_state(
            p, conn.model_copy(update={"mode": "oauth", "updated_at": datetime.now(UTC)})
        )
        del p.stub.tokens[old_token]
        p.stub.issue_store.set_status(ORG, "9500001", "resolved")
        clock = Clock()
        loop = SweepLoop(p.connections, p.sweeper, Schedule(60.0, 0.0, random.random), clock=clock)
        stop = asyncio.Event()

        assert await loop.once(stop) == 1
        assert loop.swept == []
        assert [o for o, _ in await _sweeps(p)] == ["failed"]
        assert "TokenRejected" in ((await _sweeps(p))[0][1] or "")
        requests = await _refresh_requests(p)
        assert [(r.connection_id, r.rejected_token) for r in requests] == [
            (p.connection_id, token_fingerprint(old_token))
        ]
        assert old_token not in orjson.dumps([r.model_dump(mode="json") for r in requests]).decode()

        # the keeper refreshes: a new token in Sentry and on cp-connections
        new_token = p.stub.add_internal_token(ORG)
        refreshed = p.connections.get(p.connection_id).model_copy(
            update={"auth_token_enc": p.box.encrypt(new_token), "updated_at": datetime.now(UTC)}
        )
        await _publish_state(p, refreshed)
        clock.now += 30  # not its turn yet: nothing is swept (the refusal is not retried hot)
        assert await loop.once(stop) == 0
        clock.now += 31  # its next turn
        assert await loop.once(stop) == 1
        (row,) = loop.swept
        assert row.counts() == {"resolved": 1}
        assert [o for o, _ in await _sweeps(p)] == ["failed", "ok"]
        assert len(await _refresh_requests(p)) == 1  # asked once, for the rejected token only


async def test_an_internal_token_rejected_is_logged_not_sent_to_the_keeper(
    make_pipeline: Any,
) -> None:
    async with make_pipeline() as p:
        await p.open_issues(["9500101"])
        conn = p.connections.get(p.connection_id)
        del p.stub.tokens[p.connections.credentials(conn).token]
        loop = SweepLoop(p.connections, p.sweeper, Schedule(60.0, 0.0, random.random))
        assert await loop.once(asyncio.Event()) == 1  # the loop survives it, no exception
        assert [o for o, _ in await _sweeps(p)] == ["failed"]
        assert await _refresh_requests(p) == []  # only a person can replace an internal token
