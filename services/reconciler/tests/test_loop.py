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
from blametrail_sentry_stub.state import Token

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


def _second_connection(p: Any, connection_id: str, **over: Any) -> ConnectionStateV1:
    conn: ConnectionStateV1 = p.connections.get(p.connection_id)
    return conn.model_copy(
        update={"connection_id": connection_id, "updated_at": datetime.now(UTC), **over}
    )


async def _outcomes(p: Any, connection_id: str) -> list[str]:
    rows = await p.rows(
        "SELECT outcome FROM reconcile_sweeps WHERE connection_id = %s ORDER BY started_at",
        connection_id,
    )
    return [r[0] for r in rows]


async def test_a_failing_connection_is_backed_off_and_the_others_are_swept(
    make_pipeline: Any,
) -> None:
    """A 403 (the token no longer has access to the organization) fails that connection's sweep
    only: recorded failed, tried again after the backoff, not before; the connection after it
    is swept in the same pass."""
    async with make_pipeline() as p:
        await p.open_issues(["9700001"])
        p.stub.issue_store.set_status(ORG, "9700001", "resolved")
        token = p.connections.credentials(p.connections.get(p.connection_id)).token
        p.stub.tokens[token] = Token(token, "another-org")  # Sentry answers 403 now
        other = "ffffffff-ffff-4fff-8fff-ffffffffffff"  # sorted after the failing one
        state = _second_connection(p, other)
        await p.producer.send("cp-connections", new_event(state, key=other))
        await until("the second connection", lambda: _has_conn(p, other), timeout_s=30)
        clock = Clock()
        loop = SweepLoop(
            p.connections, p.sweeper, Schedule(60.0, 0.0, random.random, 30.0), clock=clock
        )
        stop = asyncio.Event()

        assert await loop.once(stop) == 2  # no exception: the failure stayed with its sweep
        assert [r.connection_id for r in loop.swept] == [other]
        assert await _outcomes(p, p.connection_id) == ["failed"]
        assert "403" in ((await _sweeps(p))[0][1] or "")
        assert await _outcomes(p, other) == ["ok"]
        assert loop.schedule.due[p.connection_id] == clock.now + 30  # backed off

        clock.now += 29
        assert await loop.once(stop) == 0  # not retried hot
        p.stub.tokens[token] = Token(token, ORG)  # access given back
        clock.now += 2
        assert await loop.once(stop) == 1  # the failed one, the other's turn is at +60
        (row,) = loop.swept
        assert row.connection_id == p.connection_id
        assert row.counts() == {"resolved": 1}
        assert await _outcomes(p, p.connection_id) == ["failed", "ok"]


async def test_a_sweep_held_up_does_not_hold_up_the_other_connections(
    make_pipeline: Any,
) -> None:
    """One connection's Sentry does not answer (a long hold): the loop keeps starting the other
    connections' sweeps on their turns meanwhile, never a second sweep of the one in flight,
    and stops at once."""
    held = asyncio.Event()

    async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.set()
        await reader.read()  # until the client goes away
        writer.close()

    server = await asyncio.start_server(never_answers, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, make_pipeline() as p:
        await p.open_issues(["9700101"])
        other = "ffffffff-ffff-4fff-8fff-fffffffffff1"
        state = _second_connection(p, other)  # the stand-in answers this one
        stuck = p.connections.get(p.connection_id).model_copy(
            update={"api_base_url": f"http://127.0.0.1:{port}", "updated_at": datetime.now(UTC)}
        )
        await _publish_state(p, stuck)
        await p.producer.send("cp-connections", new_event(state, key=other))
        await until("the second connection", lambda: _has_conn(p, other), timeout_s=30)
        clock = Clock()
        loop = SweepLoop(p.connections, p.sweeper, Schedule(5.0, 0.0, random.random), clock=clock)
        stop = asyncio.Event()
        clock.now += 1  # both due
        runner = asyncio.create_task(loop.run(stop, tick_s=0.05))
        await asyncio.wait_for(held.wait(), 60)
        await until("the other swept", lambda: _ge(_outcomes(p, other), 1), timeout_s=60)
        clock.now += 6  # the other's next turn: swept again while the stuck one still runs
        await until("the other swept again", lambda: _ge(_outcomes(p, other), 2), timeout_s=60)
        assert p.connection_id in loop.running
        assert await _outcomes(p, p.connection_id) == []  # never started twice, not finished
        stop.set()
        await asyncio.wait_for(runner, 10)
        assert loop.running == {}


async def _has_conn(p: Any, connection_id: str) -> bool:
    return p.connections.get(connection_id) is not None


async def _ge(value: Any, n: int) -> bool:
    return len(await value) >= n
