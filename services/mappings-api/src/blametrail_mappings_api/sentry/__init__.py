"""The Sentry-facing parts of the control plane.

- :mod:`.client`: the public Sentry app's own calls (grant exchange, refresh, verification).
- :mod:`.state`: the signed connect state that ties a browser's install to an organization.
- :mod:`.oauth_flow` and :mod:`.binding`: an OAuth install, from grant to bound connection, and
  uninstall; :mod:`.token_keeper`: refreshes those connections' tokens.
- :mod:`.oauth`: :class:`~.oauth.OAuth`, the three above as one object (and their Kafka topics);
  :mod:`.oauth_routes`: the browser's side of an install.
- :mod:`.ui_components` (with :mod:`.ui_verify`): the Sentry UI-component callbacks.
- :mod:`.deploy_import`: deploys from Sentry's releases.
"""
