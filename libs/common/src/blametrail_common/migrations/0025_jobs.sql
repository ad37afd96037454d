-- Background jobs (issue 17 page 4): the control plane records a job (POST
-- /api/v1/audit/reprocess), a worker of the replay package runs it (blametrail-replay-jobs):
-- claimed with FOR UPDATE SKIP LOCKED, woken by NOTIFY blametrail_jobs (the job id), kept with a
-- heartbeat. A running job whose heartbeat is older than the worker's stale limit is taken over
-- and run again from the start (reprocessing is idempotent), at most max_attempts times.
CREATE TABLE jobs (
    job_id         uuid        PRIMARY KEY,
    tenant_id      uuid        NOT NULL REFERENCES organizations (id),
    kind           text        NOT NULL CHECK (kind IN ('reprocess_ignored')),
    params         jsonb       NOT NULL,             -- e.g. {"connection_id", "project_slug"}
    -- what at most one live job works on (kind:connection:project); see the index below
    subject        text        NOT NULL,
    state          text        NOT NULL DEFAULT 'queued'
                               CHECK (state IN ('queued', 'running', 'done', 'failed')),
    attempt        integer     NOT NULL DEFAULT 0,   -- claims so far; updates name theirs
    worker         text,                             -- host:pid of the claiming worker
    total          bigint,                           -- raw webhooks in the window (once known)
    processed      bigint      NOT NULL DEFAULT 0,   -- of them read so far
    republished    bigint      NOT NULL DEFAULT 0,   -- ignored webhooks normalized again
    still_ignored  bigint      NOT NULL DEFAULT 0,   -- ignored ones still ignored (no mapping)
    error          text,
    created_by     text        NOT NULL,             -- the principal: user:<id> or api_key:<id>
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    heartbeat_at   timestamptz,
    finished_at    timestamptz
);
CREATE UNIQUE INDEX jobs_one_live_per_subject ON jobs (subject) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_live ON jobs (created_at) WHERE state IN ('queued', 'running');
