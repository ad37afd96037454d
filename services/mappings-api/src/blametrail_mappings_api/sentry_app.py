"""Compatibility: the names this module had before the control plane was split by role (tools
and tests import them from here). The code is :mod:`blametrail_mappings_api.sentry.client`."""

from blametrail_mappings_api.sentry.client import (
    JWT_GRANT,
    SentryApp,
    SentryAuthRefused,
    SentryUnavailable,
    TokenPair,
    jwt_bearer,
)

__all__ = [
    "JWT_GRANT",
    "SentryApp",
    "SentryAuthRefused",
    "SentryUnavailable",
    "TokenPair",
    "jwt_bearer",
]
