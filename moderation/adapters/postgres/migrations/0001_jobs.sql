-- Job records and results: one row per job, in daily partitions by the UTC day it was created.
-- Retention drops whole partitions (moderation_drop_job_partitions), never deletes rows.
-- Ids are scoped ids ("<tenant>/<id>"); an id lookup reads the primary-key index of each live
-- partition in one statement (a handful: retention days plus the days made ahead).

CREATE TABLE jobs (
    id           text        NOT NULL,
    day          date        NOT NULL,
    tenant       text        NOT NULL,
    created_at   timestamptz NOT NULL,
    fingerprint  text,
    status       text        NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'running', 'done', 'error')),
    decision     text,
    job          jsonb       NOT NULL,
    result       jsonb       NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    PRIMARY KEY (id, day)
) PARTITION BY RANGE (day);

-- Jobs that have not ended, oldest publish first: the lost-message sweep and republishing
-- after Redis lost its queue.
CREATE INDEX jobs_unfinished ON jobs (published_at) WHERE finished_at IS NULL;
-- "Everything tenant X decided lately".
CREATE INDEX jobs_tenant_created ON jobs (tenant, created_at);

-- The partition of one day: jobs_YYYYMMDD.
CREATE FUNCTION moderation_job_partition(d date) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT 'jobs_' || to_char(d, 'YYYYMMDD') $$;

-- Make the daily partitions of first_day .. last_day that are missing; returns how many it made.
-- Callers serialise on an advisory lock (two concurrent CREATEs of one partition would clash).
CREATE FUNCTION moderation_make_job_partitions(first_day date, last_day date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    d date;
    made integer := 0;
BEGIN
    FOR d IN SELECT generate_series(first_day, last_day, interval '1 day')::date LOOP
        IF to_regclass(moderation_job_partition(d)) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF jobs FOR VALUES FROM (%L) TO (%L)',
                moderation_job_partition(d), d, d + 1
            );
            made := made + 1;
        END IF;
    END LOOP;
    RETURN made;
END
$$;

-- Drop the daily partitions of days before first_kept; returns the names it dropped.
CREATE FUNCTION moderation_drop_job_partitions(first_kept date) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    part record;
BEGIN
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'jobs'::regclass
          AND c.relname ~ '^jobs_[0-9]{8}$'
          AND to_date(substr(c.relname, 6), 'YYYYMMDD') < first_kept
        ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE %I', part.relname);
        RETURN NEXT part.relname;
    END LOOP;
END
$$;

SELECT moderation_make_job_partitions(
    (now() AT TIME ZONE 'UTC')::date - 1, (now() AT TIME ZONE 'UTC')::date + 3
);
