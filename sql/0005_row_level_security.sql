-- Row-level security on the synced tables. The application reads them under its own role and tells
-- the database who is asking, per transaction:  SET LOCAL orgsync.user_id = 'user_…';
-- It then sees only the organizations that user belongs to, their memberships and their members'
-- profiles; with no acting user, nothing. Writes are not granted to it at all (sql/roles/).
--
-- The tables' owner (the role that runs these migrations) and superusers are not subject to these
-- policies (RLS is enabled, not forced). The pipeline and receiver roles get policies of their own
-- that see and write every row: sql/roles/create_roles.sql creates them with those roles.
-- Runs for a superuser and for a non-superuser owner alike (only ownership is needed).

DO $$
BEGIN
    -- The organizations of the acting user. SECURITY DEFINER (runs as the tables' owner, so it reads
    -- organization_members without its policy, which would otherwise recurse into itself); its
    -- search_path is pinned to this schema so no caller can substitute a table.
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION orgsync_acting_user_organizations() RETURNS SETOF text
            LANGUAGE sql STABLE SECURITY DEFINER SET search_path = %I, pg_temp
            AS $body$
                SELECT organization_id FROM organization_members
                WHERE user_id = nullif(current_setting('orgsync.user_id', true), '')
            $body$
    $f$, current_schema());
END $$;
REVOKE ALL ON FUNCTION orgsync_acting_user_organizations() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgsync_acting_user_organizations() TO PUBLIC;

ALTER TABLE organizations ENABLE ROW LEVEL SECURITY;
ALTER TABLE organization_members ENABLE ROW LEVEL SECURITY;
ALTER TABLE profiles ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS orgsync_member_reads ON organizations;
CREATE POLICY orgsync_member_reads ON organizations FOR SELECT TO PUBLIC
    USING (id IN (SELECT orgsync_acting_user_organizations()));

DROP POLICY IF EXISTS orgsync_member_reads ON organization_members;
CREATE POLICY orgsync_member_reads ON organization_members FOR SELECT TO PUBLIC
    USING (organization_id IN (SELECT orgsync_acting_user_organizations()));

DROP POLICY IF EXISTS orgsync_member_reads ON profiles;
CREATE POLICY orgsync_member_reads ON profiles FOR SELECT TO PUBLIC
    USING (
        id = nullif(current_setting('orgsync.user_id', true), '')
        OR EXISTS (
            SELECT 1 FROM organization_members m
            WHERE m.user_id = profiles.id
              AND m.organization_id IN (SELECT orgsync_acting_user_organizations())
        )
    );
