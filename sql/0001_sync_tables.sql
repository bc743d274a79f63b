-- Tables orgsync keeps in step with Clerk. Written to also adopt a database that already has
-- some of these tables (the seed's schema): every statement is a no-op when its object exists.

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE t.typname = 'org_role' AND n.nspname = current_schema()
    ) THEN
        CREATE TYPE org_role AS ENUM ('owner', 'admin', 'member', 'viewer');
    END IF;
END $$;
ALTER TYPE org_role ADD VALUE IF NOT EXISTS 'owner';
ALTER TYPE org_role ADD VALUE IF NOT EXISTS 'admin';
ALTER TYPE org_role ADD VALUE IF NOT EXISTS 'member';
ALTER TYPE org_role ADD VALUE IF NOT EXISTS 'viewer';

-- Clerk timestamps are integer milliseconds; this keeps the conversion exact (no float rounding).
CREATE OR REPLACE FUNCTION orgsync_ms_to_timestamptz(ms bigint) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN timestamptz 'epoch' + ms * interval '1 millisecond';

CREATE TABLE IF NOT EXISTS organizations (
    id              text PRIMARY KEY,
    name            text NOT NULL,
    slug            text,
    image_url       text,
    public_metadata jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz,
    updated_at      timestamptz,
    deleted_at      timestamptz,
    synced_at       timestamptz
);
ALTER TABLE organizations
    ADD COLUMN IF NOT EXISTS slug            text,
    ADD COLUMN IF NOT EXISTS image_url       text,
    ADD COLUMN IF NOT EXISTS public_metadata jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS created_at      timestamptz,
    ADD COLUMN IF NOT EXISTS updated_at      timestamptz,
    ADD COLUMN IF NOT EXISTS deleted_at      timestamptz,
    -- NULL means orgsync never wrote the row (adopted data): the next sync may overwrite it.
    ADD COLUMN IF NOT EXISTS synced_at       timestamptz;

CREATE TABLE IF NOT EXISTS profiles (
    id         text PRIMARY KEY,
    email      text,
    first_name text,
    last_name  text,
    image_url  text,
    created_at timestamptz,
    updated_at timestamptz,
    deleted_at timestamptz,
    synced_at  timestamptz
);
ALTER TABLE profiles
    ADD COLUMN IF NOT EXISTS email      text,
    ADD COLUMN IF NOT EXISTS first_name text,
    ADD COLUMN IF NOT EXISTS last_name  text,
    ADD COLUMN IF NOT EXISTS image_url  text,
    ADD COLUMN IF NOT EXISTS created_at timestamptz,
    ADD COLUMN IF NOT EXISTS updated_at timestamptz,
    ADD COLUMN IF NOT EXISTS deleted_at timestamptz,
    ADD COLUMN IF NOT EXISTS synced_at  timestamptz;

CREATE TABLE IF NOT EXISTS organization_members (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    clerk_membership_id text UNIQUE,
    organization_id     text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    user_id             text NOT NULL REFERENCES profiles (id) ON DELETE CASCADE,
    role                org_role NOT NULL,
    clerk_role          text NOT NULL,
    joined_at           timestamptz,
    updated_at          timestamptz,
    synced_at           timestamptz,
    UNIQUE (organization_id, user_id)
);
ALTER TABLE organization_members
    ADD COLUMN IF NOT EXISTS clerk_membership_id text,
    ADD COLUMN IF NOT EXISTS clerk_role          text,
    ADD COLUMN IF NOT EXISTS joined_at           timestamptz,
    ADD COLUMN IF NOT EXISTS updated_at          timestamptz,
    ADD COLUMN IF NOT EXISTS synced_at           timestamptz;
-- Adopted rows predate clerk_role: derive Clerk's key from the app role.
UPDATE organization_members SET clerk_role = 'org:' || role::text WHERE clerk_role IS NULL;
ALTER TABLE organization_members ALTER COLUMN clerk_role SET NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS organization_members_clerk_membership_id_key
    ON organization_members (clerk_membership_id);
CREATE UNIQUE INDEX IF NOT EXISTS organization_members_organization_id_user_id_key
    ON organization_members (organization_id, user_id);
CREATE INDEX IF NOT EXISTS organization_members_user_id_idx ON organization_members (user_id);

-- A deleted membership leaves no row, so its deletion time is kept here: data no newer than the
-- deletion cannot bring it back, while a later membership of the same user (a rejoin) can.
CREATE TABLE IF NOT EXISTS membership_tombstones (
    organization_id     text NOT NULL,
    user_id             text NOT NULL,
    clerk_membership_id text,
    deleted_at          timestamptz NOT NULL,
    PRIMARY KEY (organization_id, user_id)
);

CREATE TABLE IF NOT EXISTS sync_quarantine (
    id            bigserial PRIMARY KEY,
    entity        text NOT NULL,
    clerk_id      text,
    reason        text NOT NULL,
    payload       jsonb NOT NULL,
    source        text NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    -- A record without a usable id is keyed by its content, so re-seeing it updates one row.
    record_key    text GENERATED ALWAYS AS (coalesce(clerk_id, md5(payload::text))) STORED,
    UNIQUE (entity, record_key)
);
