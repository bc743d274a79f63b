-- One row per table per full sync: when it started and finished, how it ended, what it counted.
-- `orgsync status` reads the latest row of each table; the full-sync assets write them.
CREATE TABLE IF NOT EXISTS sync_runs (
    id          bigserial PRIMARY KEY,
    table_name  text NOT NULL
                CHECK (table_name IN ('organizations', 'profiles', 'organization_members')),
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    outcome     text NOT NULL DEFAULT 'running' CHECK (outcome IN ('running', 'success', 'failure')),
    counts      jsonb,
    -- The operator's message (never a secret), for a failure.
    error       text,
    -- The Dagster run that did the sync, when there is one.
    run_id      text
);
CREATE INDEX IF NOT EXISTS sync_runs_latest ON sync_runs (table_name, started_at DESC);
