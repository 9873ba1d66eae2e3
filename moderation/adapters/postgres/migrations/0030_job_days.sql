-- Job id -> the day of its partition: a lookup by id is one read of this table's primary key,
-- then one read of that day's partition (run-time partition pruning on the day it names),
-- instead of a probe of every live partition's index. Job ids are chosen by the callers
-- (idempotency keys), so the day cannot be derived from the id itself.
--
-- It is also where an id is unique across partitions: a create claims the id here first
-- (INSERT ... ON CONFLICT (id) DO NOTHING), so two concurrent creates of one id on either
-- side of midnight cannot both win.
--
-- Retention: moderation_drop_job_partitions deletes the ids of the days it drops (by the index
-- on day). That is the one row-by-row delete of the job tables; rows are narrow (the id and a
-- date) and the table stays at retention x rate rows, its freed space reused by new days.

CREATE TABLE job_days (
    id  text NOT NULL PRIMARY KEY,
    day date NOT NULL
);
CREATE INDEX job_days_day ON job_days (day);

INSERT INTO job_days (id, day)
SELECT DISTINCT ON (id) id, day FROM jobs ORDER BY id, day DESC
ON CONFLICT (id) DO NOTHING;

CREATE OR REPLACE FUNCTION moderation_drop_job_partitions(first_kept date) RETURNS SETOF text
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
    DELETE FROM job_days WHERE day < first_kept;
END
$$;
