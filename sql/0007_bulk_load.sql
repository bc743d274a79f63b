-- A first load into an empty table, with its indexes and foreign keys built once after the rows
-- instead of maintained row by row, is 2.4 times faster at a million memberships (see
-- BENCHMARKS.md, section 1). orgsync_defer_indexes drops them, remembering their definitions as the
-- catalog states them; orgsync_restore_indexes builds them again. Both run inside the loading
-- transaction, so a failure anywhere rolls the DDL back together with the rows.

CREATE OR REPLACE FUNCTION orgsync_defer_indexes(target regclass) RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    item     record;
    deferred integer := 0;
    empty    boolean;
    previous text := current_setting('lock_timeout');
BEGIN
    EXECUTE format('SELECT NOT EXISTS (SELECT FROM %s)', target) INTO empty;
    IF NOT empty
        OR NOT pg_has_role((SELECT relowner FROM pg_class WHERE oid = target), 'USAGE')
        -- Keys other tables reference, and exclusion constraints, are left alone: no fast path.
        OR EXISTS (SELECT FROM pg_constraint WHERE confrelid = target AND conrelid <> target)
        OR EXISTS (SELECT FROM pg_constraint WHERE conrelid = target AND contype = 'x')
    THEN
        RETURN 0;
    END IF;

    -- Readers of the table (and, for its foreign keys, of the parents) wait until the load
    -- commits; never wait long for them first, and never queue other sessions behind us. Raising
    -- out of this block undoes all of it and releases its locks: the caller merges as usual.
    PERFORM set_config('lock_timeout', '2s', true);
    BEGIN
        EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', target);
        EXECUTE format('SELECT NOT EXISTS (SELECT FROM %s)', target) INTO empty;
        IF NOT empty THEN  -- a writer got in before the lock
            RAISE EXCEPTION USING ERRCODE = 'OS001';
        END IF;

        CREATE TEMPORARY TABLE IF NOT EXISTS orgsync_deferred_ddl (
            position  serial PRIMARY KEY,
            statement text NOT NULL
        ) ON COMMIT DROP;

        FOR item IN
            SELECT i.indexrelid::regclass AS index_name, pg_get_indexdef(i.indexrelid) AS index_definition,
                   c.conname, pg_get_constraintdef(c.oid) AS constraint_definition
            FROM pg_index i
            LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = target
                                     AND c.contype IN ('p', 'u')
            WHERE i.indrelid = target
            ORDER BY i.indexrelid
        LOOP
            IF item.conname IS NULL THEN
                INSERT INTO orgsync_deferred_ddl (statement) VALUES (item.index_definition);
                EXECUTE format('DROP INDEX %s', item.index_name);
            ELSE
                INSERT INTO orgsync_deferred_ddl (statement) VALUES (format(
                    'ALTER TABLE %s ADD CONSTRAINT %I %s', target, item.conname, item.constraint_definition));
                EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', target, item.conname);
            END IF;
            deferred := deferred + 1;
        END LOOP;

        FOR item IN
            SELECT conname, pg_get_constraintdef(oid) AS constraint_definition
            FROM pg_constraint WHERE conrelid = target AND contype = 'f' ORDER BY oid
        LOOP
            INSERT INTO orgsync_deferred_ddl (statement) VALUES (format(
                'ALTER TABLE %s ADD CONSTRAINT %I %s', target, item.conname, item.constraint_definition));
            EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', target, item.conname);
            deferred := deferred + 1;
        END LOOP;
    EXCEPTION WHEN lock_not_available OR SQLSTATE 'OS001' THEN
        PERFORM set_config('lock_timeout', previous, true);
        RETURN 0;
    END;

    PERFORM set_config('lock_timeout', previous, true);
    RETURN deferred;
END $$;

CREATE OR REPLACE FUNCTION orgsync_restore_indexes() RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    item     record;
    restored integer := 0;
BEGIN
    FOR item IN SELECT statement FROM pg_temp.orgsync_deferred_ddl ORDER BY position LOOP
        EXECUTE item.statement;
        restored := restored + 1;
    END LOOP;
    DROP TABLE pg_temp.orgsync_deferred_ddl;
    RETURN restored;
END $$;
