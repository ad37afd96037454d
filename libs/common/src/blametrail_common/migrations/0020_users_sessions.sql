-- People and sign-in (services/mappings-api): users of an organization with a role, their
-- sessions (only a hash of the token stored, like API keys), the sign-in throttle, and API keys
-- with a name, a role and a last use. Keys made before this are admin keys.

ALTER TABLE api_keys
    ADD COLUMN name          text NOT NULL DEFAULT '',
    ADD COLUMN role          text NOT NULL DEFAULT 'admin' CHECK (role IN ('admin', 'member')),
    ADD COLUMN last_used_at  timestamptz;
CREATE INDEX api_keys_org ON api_keys (org_id, created_at, id);

CREATE TABLE users (
    id             uuid PRIMARY KEY,
    org_id         uuid NOT NULL REFERENCES organizations (id),
    email          text NOT NULL,
    name           text NOT NULL,
    role           text NOT NULL CHECK (role IN ('admin', 'member')),
    password_hash  text NOT NULL,             -- argon2id (PHC string), never the password
    disabled       boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
-- One account per address across the installation, whatever its case.
CREATE UNIQUE INDEX users_email ON users (lower(email));
CREATE INDEX users_org ON users (org_id, created_at, id);

-- A session token is bts_<prefix>_<secret>; the prefix finds the row, SHA-256 of the token checks it.
-- Idle expiry is last_used_at + the idle limit (a setting); expires_at is the absolute limit.
CREATE TABLE user_sessions (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users (id),
    prefix        text NOT NULL UNIQUE,
    token_sha256  text NOT NULL,
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    last_used_at  timestamptz NOT NULL,
    revoked_at    timestamptz
);
CREATE INDEX user_sessions_live ON user_sessions (user_id) WHERE revoked_at IS NULL;

-- Failed sign-ins per key ('account:<email>' or 'address:<ip>') in a fixed window.
CREATE TABLE login_throttle (
    key           text PRIMARY KEY,
    failures      integer NOT NULL,
    window_start  timestamptz NOT NULL
);
