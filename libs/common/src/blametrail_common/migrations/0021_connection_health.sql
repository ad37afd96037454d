-- Connection health (GET .../connections/{id}/health): when the token keeper last refreshed an
-- OAuth token, and indexes for the per-connection counts of the last 24 h.
ALTER TABLE sentry_connections ADD COLUMN token_refreshed_at timestamptz;
CREATE INDEX webhook_audit_connection ON webhook_audit (connection_id, received_at DESC);
CREATE INDEX incident_timeline_connection
    ON incident_timeline (tenant_id, (payload -> 'sentry' ->> 'connection_id'), occurred_at DESC);
CREATE INDEX incidents_connection ON incidents (tenant_id, (sentry ->> 'connection_id'));
