-- New organization_members rows get time-ordered UUIDs (version 7: the first 48 bits are the Unix time
-- in milliseconds, the rest random, as gen_random_uuid's) instead of random ones. The column stays uuid
-- and existing ids stay as they are; new keys then land at the right-hand edge of the primary key's
-- index instead of on a random page of it (BENCHMARKS.md, section 1).
CREATE OR REPLACE FUNCTION orgsync_uuid_v7() RETURNS uuid
    LANGUAGE sql VOLATILE PARALLEL SAFE
    RETURN encode(
        set_bit(
            set_bit(
                overlay(
                    uuid_send(gen_random_uuid())
                    PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6
                ),
                52, 1  -- with gen_random_uuid's version bits (0100) these two make version 7 (0111)
            ),
            53, 1
        ),
        'hex'
    )::uuid;

ALTER TABLE organization_members ALTER COLUMN id SET DEFAULT orgsync_uuid_v7();
