"""Compatibility: the names this module had before the control plane was split by role (tools
and tests import them from here). The code is :mod:`blametrail_mappings_api.sentry.deploy_import`."""

from blametrail_mappings_api.sentry.deploy_import import (
    ImportSummary,
    SentryDeployStore,
    deploys_command,
    deploys_from_release,
    import_from_sentry,
)

__all__ = [
    "ImportSummary",
    "SentryDeployStore",
    "deploys_command",
    "deploys_from_release",
    "import_from_sentry",
]
