-- orgsync's database roles. NOT a migration: an administrator runs it once per database and schema,
-- after `orgsync migrate` (run as the owner), and again after each upgrade; it is idempotent.
--
--   psql "$ADMIN_DATABASE_URL" -f sql/roles/create_roles.sql
--
-- Role names and the schema are settings (defaults in brackets), e.g.
--   PGOPTIONS="-c orgsync.pipeline_role=acme_pipeline -c orgsync.schema=orgsync" psql … -f …
--   orgsync.pipeline_role  [orgsync_pipeline]  Dagster (full sync, apply runs, sensor), CLI
--   orgsync.receiver_role  [orgsync_receiver]  the webhook receiver (orgsync serve-webhooks)
--   orgsync.app_role       [orgsync_app]       the application: reads, under row-level security
--   orgsync.receiver_applies [on]  off when the receivers only store events (ORGSYNC_WEBHOOK_APPLY=sensor)
--   orgsync.schema         [current_schema()]  where orgsync's tables live
--   orgsync.owner_role     [owner of orgsync_migrations]  the role that runs orgsync's migrations
--
-- Needs CREATEROLE (to create the roles) and ownership of the tables or superuser (for grants,
-- default privileges and the writers' row-level-security policies). Roles are created LOGIN
-- without a password: set one with ALTER ROLE … PASSWORD, or map them in pg_hba.conf.
--
-- What each role may do:
--   pipeline: read and write every orgsync table (synced tables, tombstones, quarantine, inbox,
--             write log, sync runs, and tables later migrations add: default privileges follow the
--             owner), read orgsync_migrations, create temporary (staging) tables. Bypasses the
--             synced tables' row-level security through policies of its own (USING/WITH CHECK
--             true), not BYPASSRLS, so no superuser is needed and nothing else is exempted.
--   receiver: read, insert and update webhook_inbox; when it applies events inline, the
--             pipeline's grants and policies as well.
--   app:      SELECT on organizations, organization_members, profiles, filtered by
--             sql/0005_row_level_security.sql to the acting user's organizations. No writes.

DO $roles$
DECLARE
    pipeline text := coalesce(nullif(current_setting('orgsync.pipeline_role', true), ''), 'orgsync_pipeline');
    receiver text := coalesce(nullif(current_setting('orgsync.receiver_role', true), ''), 'orgsync_receiver');
    app text := coalesce(nullif(current_setting('orgsync.app_role', true), ''), 'orgsync_app');
    receiver_applies boolean := coalesce(nullif(current_setting('orgsync.receiver_applies', true), ''), 'on')::boolean;
    target_schema text := coalesce(nullif(current_setting('orgsync.schema', true), ''), current_schema());
    owner_role text := nullif(current_setting('orgsync.owner_role', true), '');
    writers text[];
    role_name text;
    table_name text;
BEGIN
    IF to_regclass(format('%I.orgsync_migrations', target_schema)) IS NULL THEN
        RAISE EXCEPTION 'no orgsync tables in schema %: run `orgsync migrate` as the owner first', target_schema;
    END IF;
    owner_role := coalesce(owner_role, (
        SELECT tableowner FROM pg_tables WHERE schemaname = target_schema AND tablename = 'orgsync_migrations'));
    writers := CASE WHEN receiver_applies THEN ARRAY[pipeline, receiver] ELSE ARRAY[pipeline] END;

    FOREACH role_name IN ARRAY ARRAY[pipeline, receiver, app] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
            EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE', role_name);
        END IF;
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), role_name);
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', target_schema, role_name);
        EXECUTE format('GRANT SELECT ON %I.orgsync_migrations TO %I', target_schema, role_name);
    END LOOP;

    FOREACH role_name IN ARRAY writers LOOP
        EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO %I', current_database(), role_name);
        -- Every table the owner has created here, and (default privileges) every one it creates later.
        FOR table_name IN
            SELECT tablename FROM pg_tables
            WHERE schemaname = target_schema AND tableowner = owner_role AND tablename <> 'orgsync_migrations'
        LOOP
            EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I.%I TO %I', target_schema, table_name, role_name);
        END LOOP;
        EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO %I', target_schema, role_name);
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %I',
                       owner_role, target_schema, role_name);
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT USAGE, SELECT ON SEQUENCES TO %I',
                       owner_role, target_schema, role_name);
        -- Adopted synced tables may belong to another role: grant on them by name as well.
        FOREACH table_name IN ARRAY ARRAY['organizations', 'profiles', 'organization_members'] LOOP
            EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I.%I TO %I', target_schema, table_name, role_name);
            EXECUTE format('DROP POLICY IF EXISTS %I ON %I.%I', 'orgsync_writer_' || role_name, target_schema, table_name);
            EXECUTE format('CREATE POLICY %I ON %I.%I FOR ALL TO %I USING (true) WITH CHECK (true)',
                           'orgsync_writer_' || role_name, target_schema, table_name, role_name);
        END LOOP;
    END LOOP;

    IF NOT receiver_applies THEN
        EXECUTE format('GRANT SELECT, INSERT, UPDATE ON %I.webhook_inbox TO %I', target_schema, receiver);
        EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %I.webhook_inbox_id_seq TO %I', target_schema, receiver);
    END IF;

    FOREACH table_name IN ARRAY ARRAY['organizations', 'profiles', 'organization_members'] LOOP
        EXECUTE format('GRANT SELECT ON %I.%I TO %I', target_schema, table_name, app);
    END LOOP;
END $roles$;
