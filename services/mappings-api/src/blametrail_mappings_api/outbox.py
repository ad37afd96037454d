"""Compatibility: the names this module had before the control plane was split by role (tools
and tests import them from here). The code is :mod:`blametrail_mappings_api.store.outbox`."""

from blametrail_mappings_api.store.outbox import Relay, enqueue, enqueue_tombstone

__all__ = ["Relay", "enqueue", "enqueue_tombstone"]
