-- Notices from outside (moderation.adapters.postgres.notices): users' and trusted flaggers'
-- reports against an item (EU DSA Art. 16, 22). The id is derived from the job, the reporter
-- and the reason, so the same report sent again only counts one more report.

CREATE TABLE notices (
    notice_id      text PRIMARY KEY,
    tenant         text NOT NULL,
    job_id         text NOT NULL,                  -- the scoped job id
    reporter_type  text NOT NULL CHECK (reporter_type IN ('user', 'trusted_flagger')),
    state          text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'answered')),
    reports        integer NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL,
    notice         jsonb NOT NULL                  -- moderation.core.notices.Notice
);
CREATE INDEX notices_open_job ON notices (job_id) WHERE state = 'open';
CREATE INDEX notices_tenant ON notices (tenant, created_at DESC);
