-- The seed's first schema stored organization ids as uuid. Clerk's ids (org_...) are text, so convert
-- organizations.id and every column that references it, keeping rows and foreign keys.
DO $$
DECLARE
    fk record;
BEGIN
    IF (SELECT data_type FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'organizations' AND column_name = 'id') = 'uuid'
    THEN
        CREATE TEMPORARY TABLE orgsync_org_fks ON COMMIT DROP AS
            SELECT c.conname, c.conrelid::regclass AS referencing_table, a.attname AS referencing_column,
                   pg_get_constraintdef(c.oid) AS definition
            FROM pg_constraint c
            JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
            WHERE c.contype = 'f' AND c.confrelid = 'organizations'::regclass;

        FOR fk IN SELECT * FROM orgsync_org_fks LOOP
            EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', fk.referencing_table, fk.conname);
        END LOOP;

        ALTER TABLE organizations ALTER COLUMN id DROP DEFAULT, ALTER COLUMN id TYPE text USING id::text;

        FOR fk IN SELECT * FROM orgsync_org_fks LOOP
            IF (SELECT atttypid FROM pg_attribute
                WHERE attrelid = fk.referencing_table AND attname = fk.referencing_column) = 'uuid'::regtype
            THEN
                EXECUTE format('ALTER TABLE %s ALTER COLUMN %I TYPE text USING %I::text',
                               fk.referencing_table, fk.referencing_column, fk.referencing_column);
            END IF;
            EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s',
                           fk.referencing_table, fk.conname, fk.definition);
        END LOOP;
    END IF;

    IF (SELECT data_type FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'organization_members'
          AND column_name = 'organization_id') = 'uuid'
    THEN
        ALTER TABLE organization_members ALTER COLUMN organization_id TYPE text USING organization_id::text;
    END IF;

    -- An adopted table may lack the foreign keys this design relies on.
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE contype = 'f' AND conrelid = 'organization_members'::regclass
                     AND confrelid = 'organizations'::regclass) THEN
        ALTER TABLE organization_members ADD CONSTRAINT organization_members_organization_id_fkey
            FOREIGN KEY (organization_id) REFERENCES organizations (id) ON DELETE CASCADE;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE contype = 'f' AND conrelid = 'organization_members'::regclass
                     AND confrelid = 'profiles'::regclass) THEN
        ALTER TABLE organization_members ADD CONSTRAINT organization_members_user_id_fkey
            FOREIGN KEY (user_id) REFERENCES profiles (id) ON DELETE CASCADE;
    END IF;
END $$;
