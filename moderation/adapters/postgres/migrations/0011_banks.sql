-- Hash banks (moderation.adapters.postgres.banks): banks, their entries (PDQ hash, metadata,
-- tombstone), the segments workers load them by, and reviewers' pending "add to bank" requests.

CREATE TABLE banks (
    name         text PRIMARY KEY,
    description  text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    version      bigint NOT NULL DEFAULT 1,   -- moves on every change of this bank
    next_id      bigint NOT NULL DEFAULT 0,   -- entry ids are never reused
    next_segment integer NOT NULL DEFAULT 0,
    entries      bigint NOT NULL DEFAULT 0,   -- live entries
    removed      bigint NOT NULL DEFAULT 0    -- tombstones
);

-- Runs of consecutive entry ids, loaded by workers in few large reads (the hashes of a segment
-- are its entries' pdq columns in id order).
CREATE TABLE bank_segments (
    bank     text NOT NULL REFERENCES banks (name) ON DELETE CASCADE,
    number   integer NOT NULL,
    first_id bigint NOT NULL,
    count    integer NOT NULL CHECK (count >= 0),
    PRIMARY KEY (bank, number)
);

CREATE TABLE bank_entries (
    bank         text NOT NULL REFERENCES banks (name) ON DELETE CASCADE,
    id           bigint NOT NULL,
    pdq          bytea NOT NULL CHECK (length(pdq) = 32),
    source       text NOT NULL DEFAULT '',
    label        text NOT NULL DEFAULT '',
    added_at     timestamptz NOT NULL,
    reference_id text,
    quality      smallint,
    removed      boolean NOT NULL DEFAULT false,  -- a tombstone: never matched again
    PRIMARY KEY (bank, id)
);
CREATE INDEX bank_entries_removed ON bank_entries (bank, id) WHERE removed;
CREATE INDEX bank_entries_reference ON bank_entries (bank, reference_id)
    WHERE reference_id IS NOT NULL;

-- One row: moves whenever any bank changes (workers poll it), in the same transaction as the
-- change, so a worker that sees the new version reads the new data.
CREATE TABLE bank_store_version (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   bigint NOT NULL DEFAULT 0
);
INSERT INTO bank_store_version (singleton, version) VALUES (true, 0);

-- A reviewer's "add to bank" request, carried out once the removal is final.
CREATE TABLE bank_requests (
    review_id  text PRIMARY KEY,
    request    jsonb NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX bank_requests_expiry ON bank_requests (expires_at);
