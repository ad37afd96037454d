"""Compatibility: the names this module had before the control plane was split by role (tools
and tests import them from here). The code is :mod:`blametrail_mappings_api.sentry.ui_components`."""

from blametrail_mappings_api.sentry.ui_components import SEVERITIES, ui_routes
from blametrail_mappings_api.settings import SentryUiSettings

__all__ = ["SEVERITIES", "SentryUiSettings", "ui_routes"]
