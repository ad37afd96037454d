"""Compatibility: the names this module had before the control plane was split by role (tools
and tests import them from here). The code is in :mod:`blametrail_mappings_api.sentry`."""

from blametrail_mappings_api.sentry.oauth import OAuth
from blametrail_mappings_api.sentry.oauth_routes import oauth_routes
from blametrail_mappings_api.sentry.state import COOKIE, ConnectState, OAuthRefused
from blametrail_mappings_api.settings import OAuthSettings

__all__ = ["COOKIE", "ConnectState", "OAuth", "OAuthRefused", "OAuthSettings", "oauth_routes"]
