-- Offsets of consumers whose effects live in Postgres: stored in the same transaction as the
-- rows they wrote, so a restart resumes exactly where the last commit left off.
CREATE TABLE consumer_offsets (
    group_id    text    NOT NULL,
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint  NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
