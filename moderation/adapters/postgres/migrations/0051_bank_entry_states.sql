-- Bank entries that do not flood (moderation.adapters.postgres.bank_guard): the state of an
-- entry that is not simply active (quarantined, confirmed, disabled: moderation.core.bank_guard)
-- and each matched entry's rate (its current window's count and the mean of past windows).

CREATE TABLE bank_entry_states (
    bank      text NOT NULL,
    entry_id  bigint NOT NULL,
    state     text NOT NULL CHECK (state IN ('quarantined', 'confirmed', 'disabled')),
    status    jsonb NOT NULL,             -- moderation.core.bank_guard.EntryStatus
    PRIMARY KEY (bank, entry_id)
);
CREATE INDEX bank_entry_states_state ON bank_entry_states (state);

CREATE TABLE bank_entry_rates (
    bank         text NOT NULL,
    entry_id     bigint NOT NULL,
    window_start double precision NOT NULL,
    count        bigint NOT NULL,
    baseline     double precision NOT NULL,
    PRIMARY KEY (bank, entry_id)
);
