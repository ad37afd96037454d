-- Latest suspects of each incident (projection of `incident-suspects`; rebuildable from the log).
CREATE TABLE incident_suspects (
    incident_id  uuid PRIMARY KEY,
    tenant_id    text        NOT NULL,
    event_id     uuid        NOT NULL,
    computed_at  timestamptz NOT NULL,          -- newest input's time: the monotonic guard
    candidates   integer     NOT NULL,
    suspects     jsonb       NOT NULL            -- ranked: deploy, score, explain, signals
);
