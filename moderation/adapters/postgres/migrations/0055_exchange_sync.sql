-- Banks synced from hash exchanges (moderation.adapters.postgres.exchange_sync): each synced
-- bank's checkpoint (the exchange library's, opaque) and, per upstream record key, the PDQ
-- hashes it put into the bank (so an upstream removal or change tombstones exactly those).

CREATE TABLE exchange_checkpoints (
    source      text PRIMARY KEY,           -- the synced bank's settings name
    checkpoint  bytea,                      -- the library's checkpoint (pickled dataclass)
    fetched     bigint NOT NULL DEFAULT 0,  -- records applied in total
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE exchange_records (
    source  text NOT NULL,
    key     text NOT NULL,                  -- the exchange's record key (repr of the library's)
    hashes  text[] NOT NULL,                -- the PDQ hashes this record put into the bank
    PRIMARY KEY (source, key)
);
