-- Writes made outside Dagster runs (the receiver's inline apply, on-demand syncs), one row per
-- table per transaction, committed together with the write itself. The webhook sensor reports
-- them to Dagster as asset materializations: it stamps a batch with report_batch (the batch's
-- highest id, which becomes the sensor's cursor) and marks it reported_at on the next tick, once
-- the daemon has stored that cursor; a tick whose result was lost is reported again.
CREATE TABLE IF NOT EXISTS write_log (
    id           bigserial PRIMARY KEY,
    path         text NOT NULL CHECK (path IN ('webhook', 'on_demand')),
    table_name   text NOT NULL
                 CHECK (table_name IN ('organizations', 'profiles', 'organization_members')),
    rows         integer NOT NULL CHECK (rows > 0),
    lag_seconds  double precision,
    written_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    report_batch bigint,
    reported_at  timestamptz
);
CREATE INDEX IF NOT EXISTS write_log_unreported ON write_log (id) WHERE reported_at IS NULL;

-- An event that can never apply (malformed payload, values Postgres cannot hold) is quarantined
-- on its first attempt instead of being retried until dead.
ALTER TABLE webhook_inbox DROP CONSTRAINT IF EXISTS webhook_inbox_status_check;
ALTER TABLE webhook_inbox ADD CONSTRAINT webhook_inbox_status_check
    CHECK (status IN ('pending', 'applied', 'ignored', 'quarantined', 'failed', 'dead'));
-- The sensor's backstop looks for pending events older than a grace period.
CREATE INDEX IF NOT EXISTS webhook_inbox_pending_received
    ON webhook_inbox (received_at) WHERE status = 'pending';
