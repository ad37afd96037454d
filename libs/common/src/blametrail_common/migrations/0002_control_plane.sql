-- Control plane (services/mappings-api). Only the control plane reads these tables; everyone
-- else learns their state from the compacted cp-* topics the outbox relay publishes.

CREATE TABLE organizations (
    id          uuid PRIMARY KEY,
    slug        text NOT NULL UNIQUE,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- API keys: only a SHA-256 of the key is stored; the short prefix finds the row.
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES organizations (id),
    prefix      text NOT NULL UNIQUE,
    key_sha256  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE services (
    id           uuid PRIMARY KEY,
    org_id       uuid NOT NULL REFERENCES organizations (id),
    slug         text NOT NULL,
    name         text NOT NULL,
    description  text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, slug)
);

-- Secrets are stored encrypted (Fernet, BLAMETRAIL_SECRET_KEYS), never in clear.
CREATE TABLE sentry_connections (
    id                  uuid PRIMARY KEY,
    org_id              uuid NOT NULL REFERENCES organizations (id),
    mode                text NOT NULL CHECK (mode IN ('internal', 'oauth')),
    sentry_org_slug     text NOT NULL,
    api_base_url        text NOT NULL,
    client_secrets_enc  text[] NOT NULL DEFAULT '{}',
    auth_token_enc      text,
    token_expires_at    timestamptz,
    installation_uuid   text UNIQUE,
    enabled             boolean NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, sentry_org_slug)
);

-- One Sentry project maps to at most one service at a time (per connection).
CREATE TABLE project_mappings (
    id                   uuid PRIMARY KEY,
    org_id               uuid NOT NULL REFERENCES organizations (id),
    connection_id        uuid NOT NULL REFERENCES sentry_connections (id),
    sentry_project_slug  text NOT NULL,
    sentry_project_id    text,
    service_id           uuid NOT NULL REFERENCES services (id),
    active               boolean NOT NULL DEFAULT true,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (connection_id, sentry_project_slug)
);
CREATE INDEX project_mappings_org ON project_mappings (org_id, created_at, id);

-- Transactional outbox: written in the same transaction as the change it announces.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    topic       text NOT NULL,
    key         bytea NOT NULL,
    value       bytea,             -- NULL is a tombstone
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
