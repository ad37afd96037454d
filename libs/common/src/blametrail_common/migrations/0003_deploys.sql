-- Deploy history (services/mappings-api, POST /api/v1/deploys; Sentry imports later). Each row is
-- also published on the compacted `deploys` topic through the outbox, which is where suspect
-- scoring reads it.
CREATE TABLE deploys (
    id             uuid PRIMARY KEY,            -- UUIDv5 of (org, service, environment, version, start): re-posting is idempotent
    org_id         uuid NOT NULL REFERENCES organizations (id),
    service_id     uuid NOT NULL REFERENCES services (id),
    version        text,
    environment    text,
    commit_sha     text,
    started_at     timestamptz,
    finished_at    timestamptz,
    author         text,
    url            text,
    changed_paths  text[],                      -- NULL: unknown (not "nothing changed")
    source         text NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'sentry')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (started_at IS NOT NULL OR finished_at IS NOT NULL)
);
CREATE INDEX deploys_service_time ON deploys (org_id, service_id, (coalesce(finished_at, started_at)) DESC);
