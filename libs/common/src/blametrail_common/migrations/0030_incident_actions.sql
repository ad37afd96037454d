-- Incident actions taken in BlameTrail (issue 18 §1): one row per accepted action, written by the
-- API in the same transaction as the command in the outbox. The API's check of what an action
-- may do reads the newer of this and the projection (the projection lags the command).
CREATE TABLE incident_actions (
    action_id        uuid PRIMARY KEY,
    incident_id      uuid        NOT NULL,
    tenant_id        text        NOT NULL,
    action           text        NOT NULL CHECK (action IN ('acknowledge', 'resolve', 'reopen', 'assign')),
    status_after     text        NOT NULL,
    assignee         jsonb,
    actor_kind       text        NOT NULL CHECK (actor_kind IN ('user', 'api_key')),
    actor_id         text        NOT NULL,
    actor_name       text        NOT NULL,
    idempotency_key  text,
    requested_at     timestamptz NOT NULL,
    UNIQUE (tenant_id, incident_id, idempotency_key)
);
CREATE INDEX incident_actions_incident ON incident_actions (incident_id, requested_at DESC);

-- Per connection: mirror BlameTrail's resolve / reopen / acknowledge onto the Sentry issue.
ALTER TABLE sentry_connections ADD COLUMN writeback boolean NOT NULL DEFAULT true;

-- The sync worker's view of each incident it may write back (services/sync): the state that
-- wins by incident_order, where it came from, and the last write-back made.
CREATE TABLE sync_incidents (
    incident_id      uuid PRIMARY KEY,
    tenant_id        text        NOT NULL,
    connection_id    text        NOT NULL,
    issue_id         text        NOT NULL,
    winner_order     text        COLLATE "C" NOT NULL,
    winner_status    text        NOT NULL,
    winner_origin    text        NOT NULL CHECK (winner_origin IN ('blametrail', 'sentry')),
    winner_at        timestamptz NOT NULL,
    winner_action_id text,
    written_order    text        COLLATE "C",     -- the winner last written back (or repaired to)
    written_status   text,
    written_at       timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
