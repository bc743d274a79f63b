-- Clerk webhook events, committed by the receiver before it answers 2xx and applied by the
-- clerk_webhook_apply job. svix-id is Svix's delivery id, the same on every redelivery.
CREATE TABLE IF NOT EXISTS webhook_inbox (
    id              bigserial PRIMARY KEY,
    svix_id         text NOT NULL UNIQUE,
    event_type      text NOT NULL,
    payload         jsonb NOT NULL,
    -- Clerk's envelope timestamp (documented as ms, sometimes sent as seconds; normalised).
    event_timestamp timestamptz,
    received_at     timestamptz NOT NULL DEFAULT now(),
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'applied', 'ignored', 'failed', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    -- A failed event is retried from this moment on (backoff); NULL for the others.
    next_attempt_at timestamptz,
    applied_at      timestamptz
);

-- What the sensor and the apply job look for: small, because handled events leave it.
CREATE INDEX IF NOT EXISTS webhook_inbox_claimable
    ON webhook_inbox (id) WHERE status IN ('pending', 'failed');
CREATE INDEX IF NOT EXISTS webhook_inbox_dead ON webhook_inbox (id) WHERE status = 'dead';
