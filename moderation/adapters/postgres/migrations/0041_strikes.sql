-- Uploader strikes and actions (moderation.adapters.postgres.strikes). Uploader ids are per
-- tenant: every key starts with the tenant. Times are unix seconds.
CREATE TABLE uploader_strikes (
    tenant      text NOT NULL,
    job_id      text NOT NULL,              -- the scoped job id: one strike per job
    uploader_id text NOT NULL,
    strike      jsonb NOT NULL,             -- moderation.core.strikes.Strike
    at          double precision NOT NULL,
    expires_at  double precision NOT NULL,
    removed_at  double precision,           -- an overturn removed it
    PRIMARY KEY (tenant, job_id)
);
CREATE INDEX uploader_strikes_uploader ON uploader_strikes (tenant, uploader_id, at DESC);

-- The action each uploader is under now (none, warn, restrict, suspend), and whether it was
-- ever warned (a suspension needs a warning first).
CREATE TABLE uploader_actions (
    tenant      text NOT NULL,
    uploader_id text NOT NULL,
    action      text NOT NULL CHECK (action IN ('none', 'warn', 'restrict', 'suspend')),
    warned      boolean NOT NULL DEFAULT false,
    updated_at  double precision NOT NULL,
    PRIMARY KEY (tenant, uploader_id)
);
