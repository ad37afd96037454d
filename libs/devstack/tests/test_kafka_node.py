"""The local broker's cluster id never looks like an option to Kafka's storage tool."""

from __future__ import annotations

import uuid

from blametrail_devstack.kafka import new_cluster_id


def test_a_cluster_id_starting_with_a_dash_is_drawn_again() -> None:
    dash = uuid.UUID(bytes=b"\xf8" + bytes(15))  # base64url "-A..." : taken for an option
    draws = iter([dash, dash, uuid.UUID(int=1)])
    cluster_id = new_cluster_id(lambda: next(draws))
    assert not cluster_id.startswith("-")
    assert len(cluster_id) == 22
    assert next(draws, None) is None  # both dashed draws were refused


def test_random_ids_are_distinct_and_never_dashed() -> None:
    ids = {new_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert not any(i.startswith("-") for i in ids)
