-- The health of each synced bank (moderation.adapters.postgres.exchange_sync), read by the
-- API's /metrics: when it last synced successfully, how many syncs failed since then (and in
-- all), and the last failure's error code. A source that has not synced yet gets its row on
-- its first attempt, successful or not.

ALTER TABLE exchange_checkpoints
    ADD COLUMN last_success_at timestamptz,
    ADD COLUMN last_attempt_at timestamptz,
    ADD COLUMN failures        integer NOT NULL DEFAULT 0,  -- failed syncs since the last success
    ADD COLUMN errors_total    bigint NOT NULL DEFAULT 0,   -- failed syncs, ever
    ADD COLUMN last_error_code text;

-- Before this migration a row was written by a successful batch only.
UPDATE exchange_checkpoints SET last_success_at = updated_at, last_attempt_at = updated_at;
