-- Public (OAuth) installs: grant exchange, token refresh by a single owner, uninstall.

-- Refresh of a bound connection's token pair. refresh_started_at is committed *before* the
-- refresh call: found set at the next attempt, the call's outcome is unknown (Sentry deletes the
-- old pair when it answers), so the owner recovers with the JWT-bearer grant instead.
ALTER TABLE sentry_connections
    ADD COLUMN refresh_token_enc     text,
    ADD COLUMN refresh_started_at    timestamptz,
    ADD COLUMN refresh_requested_at  timestamptz;   -- a reader saw Sentry reject the token
CREATE INDEX sentry_connections_oauth_due ON sentry_connections (token_expires_at)
    WHERE mode = 'oauth' AND enabled;

-- One row per Sentry installation of the public app, from its first sight (webhook or redirect).
-- Tokens live here only between the exchange and the binding to a BlameTrail organization; then
-- they move to the connection. code_sha256 names the grant exchanged (the code is never stored).
CREATE TABLE sentry_installations (
    uuid                 text PRIMARY KEY,
    sentry_org_slug      text,
    status               text NOT NULL CHECK (status IN ('pending', 'exchanged', 'bound', 'deleted')),
    code_sha256          text,
    exchange_started_at  timestamptz,   -- as refresh_started_at: set before the call, cleared after
    exchanged_at         timestamptz,   -- the grant's pair is ours; binding it is allowed for ten minutes
    auth_token_enc       text,
    refresh_token_enc    text,
    token_expires_at     timestamptz,
    connection_id        uuid REFERENCES sentry_connections (id) ON DELETE SET NULL,
    verified_at          timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
