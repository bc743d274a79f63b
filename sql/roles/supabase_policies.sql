-- The Supabase variant of sql/0005_row_level_security.sql, for apps that read orgsync's tables
-- through Supabase (PostgREST, supabase-js) with Clerk as a third-party auth provider: Supabase
-- verifies the Clerk session token and exposes its claims as auth.jwt(); Clerk's user id is `sub`.
-- NOT a migration: run it in Supabase's SQL editor (as postgres) after `orgsync migrate`.
-- Idempotent. The pipeline connects as postgres (the tables' owner) or service_role (BYPASSRLS),
-- so neither needs a policy here; `anon` gets none, so it sees nothing.

CREATE OR REPLACE FUNCTION public.orgsync_jwt_user_organizations() RETURNS SETOF text
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        SELECT organization_id FROM public.organization_members
        WHERE user_id = (SELECT auth.jwt() ->> 'sub')
    $$;
REVOKE ALL ON FUNCTION public.orgsync_jwt_user_organizations() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.orgsync_jwt_user_organizations() TO authenticated;

ALTER TABLE public.organizations ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.organization_members ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.profiles ENABLE ROW LEVEL SECURITY;

GRANT SELECT ON public.organizations, public.organization_members, public.profiles TO authenticated;
REVOKE INSERT, UPDATE, DELETE, TRUNCATE
    ON public.organizations, public.organization_members, public.profiles FROM anon, authenticated;

DROP POLICY IF EXISTS orgsync_clerk_member_reads ON public.organizations;
CREATE POLICY orgsync_clerk_member_reads ON public.organizations FOR SELECT TO authenticated
    USING (id IN (SELECT public.orgsync_jwt_user_organizations()));

DROP POLICY IF EXISTS orgsync_clerk_member_reads ON public.organization_members;
CREATE POLICY orgsync_clerk_member_reads ON public.organization_members FOR SELECT TO authenticated
    USING (organization_id IN (SELECT public.orgsync_jwt_user_organizations()));

DROP POLICY IF EXISTS orgsync_clerk_member_reads ON public.profiles;
CREATE POLICY orgsync_clerk_member_reads ON public.profiles FOR SELECT TO authenticated
    USING (
        id = (SELECT auth.jwt() ->> 'sub')
        OR EXISTS (
            SELECT 1 FROM public.organization_members m
            WHERE m.user_id = profiles.id
              AND m.organization_id IN (SELECT public.orgsync_jwt_user_organizations())
        )
    );
