"""Moved to :mod:`blametrail_common.sentry_credentials` (the write-back worker uses it too)."""

from blametrail_common.sentry_credentials import ConnectionCredentials

__all__ = ["ConnectionCredentials"]
