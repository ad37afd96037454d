-- Reconciliation sweeps (services/reconciler, issue 18 §3-4): one row per sweep of one
-- connection, and one per repair it made (an observation published because Sentry disagreed
-- with the read model). Written only by the reconciler; the API reads the last sweep for a
-- connection's health.
CREATE TABLE reconcile_sweeps (
    sweep_id        uuid PRIMARY KEY,
    connection_id   text        NOT NULL,
    tenant_id       text        NOT NULL,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    outcome         text        NOT NULL,            -- ok | failed
    checked         integer     NOT NULL DEFAULT 0,  -- incidents compared
    api_calls       integer     NOT NULL DEFAULT 0,
    created_since   timestamptz,                     -- the firstSeen bound of the creations search
    repairs         jsonb       NOT NULL DEFAULT '{}', -- kind -> count
    error           text
);
CREATE INDEX reconcile_sweeps_connection ON reconcile_sweeps (connection_id, started_at DESC);

CREATE TABLE reconcile_repairs (
    sweep_id         uuid        NOT NULL REFERENCES reconcile_sweeps (sweep_id),
    kind             text        NOT NULL,            -- resolved | reopened | muted | created | merged
    sentry_issue_id  text        NOT NULL,
    incident_id      uuid,
    detail           jsonb       NOT NULL DEFAULT '{}',
    observed_at      timestamptz NOT NULL,
    PRIMARY KEY (sweep_id, sentry_issue_id)
);
CREATE INDEX reconcile_repairs_incident ON reconcile_repairs (incident_id);
