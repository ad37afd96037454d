"""The pure parts of self-healing: the backoff, what an error says went away, and supervise()."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from aiokafka.errors import CommitFailedError, KafkaConnectionError
from blametrail_common.metrics import LOOP_RESTARTS
from blametrail_common.resilience import (
    Backoff,
    Dependencies,
    backoff_s,
    dependency_of,
    supervise,
)


def test_backoff_is_full_jitter_under_a_doubling_ceiling() -> None:
    policy = Backoff(base_s=0.5, cap_s=15.0)
    assert [backoff_s(n, policy, rand=0.999999) for n in range(7)] == pytest.approx(
        [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0], rel=1e-5
    )
    assert backoff_s(3, policy, rand=0.0) == 0.0
    assert backoff_s(3, policy, rand=0.5) == pytest.approx(2.0)


def test_backoff_is_capped_for_any_attempt() -> None:
    policy = Backoff(base_s=1.0, cap_s=30.0)
    for attempt in (10, 100, 10_000):
        assert 0.0 <= backoff_s(attempt, policy) <= 30.0
    assert backoff_s(10_000, policy, rand=0.5) == pytest.approx(15.0)


def test_dependency_of_names_kafka_postgres_or_nothing() -> None:
    assert dependency_of(KafkaConnectionError("down")) == "kafka"
    assert dependency_of(CommitFailedError("rebalanced")) == "kafka"
    assert dependency_of(psycopg.OperationalError("server closed the connection")) == "postgres"
    assert dependency_of(ValueError("a bug")) is None
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = psycopg.OperationalError("gone")
    assert dependency_of(wrapped) == "postgres"


async def test_supervise_restarts_with_backoff_counts_and_marks_the_dependency() -> None:
    deps = Dependencies()
    deps.up("postgres")
    stop = asyncio.Event()
    attempts: list[float] = []
    states: list[bool] = []
    before = LOOP_RESTARTS.labels("t-supervise")._value.get()

    async def once(_: asyncio.Event) -> None:
        attempts.append(asyncio.get_running_loop().time())
        if len(attempts) == 1:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        if len(attempts) == 2:
            assert not deps.is_up("postgres")
            raise ValueError("a bug: retried too, not hot")
        deps.up("postgres")  # what a loop does once it reconnected

    await asyncio.wait_for(
        supervise(
            "t-supervise",
            once,
            stop,
            policy=Backoff(base_s=0.05, cap_s=0.2),
            dependencies=deps,
            on_state=states.append,
        ),
        5,
    )
    assert len(attempts) == 3
    assert LOOP_RESTARTS.labels("t-supervise")._value.get() - before == 2
    assert states == [True, False, True, False, True]
    assert deps.is_up("postgres")
    assert await deps.check("postgres")()
    assert not await deps.check("kafka")()  # never reached: not ready


async def test_supervise_returns_when_stopped_while_backing_off() -> None:
    stop = asyncio.Event()

    async def fail(_: asyncio.Event) -> None:
        stop.set()
        raise KafkaConnectionError("down")

    await asyncio.wait_for(supervise("t-stop", fail, stop, policy=Backoff(base_s=60, cap_s=60)), 2)
