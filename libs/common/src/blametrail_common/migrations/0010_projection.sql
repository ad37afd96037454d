-- The incidents read model, written only by the projection (services/enricher, entry point
-- blametrail_enricher.projection). Every row is derived from the Kafka log and can be rebuilt.

-- Current state of each incident.
CREATE TABLE incidents (
    incident_id        uuid PRIMARY KEY,
    tenant_id          text        NOT NULL,
    service_id         text,
    source             text        NOT NULL,           -- 'sentry' (issue / issue alert) or 'sentry_metric_alert'
    status             text        NOT NULL,           -- open | resolved | muted
    severity           text        NOT NULL,
    title              text        NOT NULL,
    culprit            text,
    assignee           jsonb,
    sentry             jsonb       NOT NULL DEFAULT '{}', -- Sentry refs: connection, org, project, issue, short id, links
    first_seen         timestamptz,
    last_seen          timestamptz,
    event_count        bigint,
    opened_at          timestamptz NOT NULL,
    resolved_at        timestamptz,
    state_changed_at   timestamptz NOT NULL,            -- Sentry-side time of the state now shown (monotonic guard)
    updated_at         timestamptz NOT NULL
);
CREATE INDEX incidents_tenant_opened ON incidents (tenant_id, opened_at DESC, incident_id DESC);
CREATE INDEX incidents_tenant_service ON incidents (tenant_id, service_id);

-- Every incident event, once, in order (occurred_at, then log position).
CREATE TABLE incident_timeline (
    event_id      uuid PRIMARY KEY,
    incident_id   uuid        NOT NULL,
    tenant_id     text        NOT NULL,
    event_type    text        NOT NULL,
    occurred_at   timestamptz NOT NULL,
    log_partition integer     NOT NULL,
    log_offset    bigint      NOT NULL,
    payload       jsonb       NOT NULL,
    sanitized     boolean     NOT NULL DEFAULT false
);
CREATE INDEX incident_timeline_incident ON incident_timeline (incident_id, occurred_at, log_partition, log_offset);

-- Latest enrichment (or enrichment failure) per incident.
CREATE TABLE incident_enrichments (
    incident_id  uuid PRIMARY KEY,
    tenant_id    text        NOT NULL,
    event_id     uuid        NOT NULL,
    status       text        NOT NULL,                  -- enriched | failed
    reason       text,
    record       jsonb,
    fetched_at   timestamptz NOT NULL,
    sanitized    boolean     NOT NULL DEFAULT false
);

-- Links between Sentry issues and incidents (both directions; filled by the OAuth/links work).
CREATE TABLE sentry_issue_links (
    incident_id        uuid NOT NULL,
    connection_id      text NOT NULL,
    sentry_issue_id    text NOT NULL,
    short_id           text,
    web_url            text,
    external_issue_id  text,
    linked_at          timestamptz NOT NULL,
    PRIMARY KEY (incident_id, connection_id, sentry_issue_id)
);

-- Webhooks received but not turned into incidents, and why.
CREATE TABLE webhook_audit (
    event_id       uuid PRIMARY KEY,
    tenant_id      text,
    connection_id  text,
    reason         text        NOT NULL,
    resource       text,
    action         text,
    project_slug   text,
    project_id     text,
    detail         jsonb       NOT NULL DEFAULT '{}',
    received_at    timestamptz NOT NULL,
    sanitized      boolean     NOT NULL DEFAULT false
);
CREATE INDEX webhook_audit_tenant ON webhook_audit (tenant_id, received_at DESC);
