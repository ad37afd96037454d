"""Pure: what a reset plans for each kind of target."""

from __future__ import annotations

from datetime import UTC, datetime

from blametrail_replay.offsets import (
    Earliest,
    Explicit,
    Latest,
    Move,
    PartitionOffsets,
    ToTime,
    logical_topic,
    plan_reset,
)

PARTS = [
    PartitionOffsets("incident-events", 0, committed=40, begin=10, end=50),
    PartitionOffsets("incident-events", 1, committed=None, begin=0, end=7),
]


def test_earliest_and_latest_go_to_the_log_bounds() -> None:
    assert plan_reset(PARTS, Earliest()) == [
        Move("incident-events", 0, 40, 10),
        Move("incident-events", 1, None, 0),
    ]
    assert [m.target for m in plan_reset(PARTS, Latest())] == [50, 7]


def test_a_time_goes_to_the_first_record_at_or_after_it_or_to_the_end() -> None:
    moves = plan_reset(PARTS, ToTime(datetime(2026, 1, 1, tzinfo=UTC)), {0: 33, 1: None})
    assert [m.target for m in moves] == [33, 7]


def test_explicit_offsets_are_clamped_and_unnamed_partitions_stay() -> None:
    assert plan_reset(PARTS, Explicit({0: 5})) == [Move("incident-events", 0, 40, 10)]
    assert plan_reset(PARTS, Explicit({0: 99, 1: 3})) == [
        Move("incident-events", 0, 40, 50),
        Move("incident-events", 1, None, 3),
    ]


def test_lag_counts_from_the_first_offset_when_never_committed() -> None:
    assert [p.lag for p in PARTS] == [10, 7]


def test_aliases_name_registry_topics() -> None:
    assert logical_topic("raw") == "sentry-webhooks-raw"
    assert logical_topic("incident-events") == "incident-events"
