-- Appeals (moderation.adapters.postgres.appeals). Their review items wait in the queue
-- 'appeal' (review_items.queue, 0061) and name the reviewers barred from them (everyone who
-- decided the item before).
ALTER TABLE review_items ADD COLUMN barred text[] NOT NULL DEFAULT '{}';

-- One row per appeal, written in the same transaction as its review item (review_id =
-- appeal_id); (job_id, number) unique: two filings racing for the same number collapse into one
-- (the same appeal) or the second is refused (another appeal).
CREATE TABLE appeals (
    appeal_id   text PRIMARY KEY,
    tenant      text NOT NULL,
    job_id      text NOT NULL,                 -- the scoped job id
    number      integer NOT NULL CHECK (number >= 1),
    appeal      jsonb NOT NULL,                -- moderation.core.appeals.Appeal
    status      text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'upheld', 'overturned')),
    filed_at    double precision NOT NULL,
    decided_at  double precision,
    UNIQUE (job_id, number)
);
CREATE INDEX appeals_open ON appeals (filed_at) WHERE status = 'open';
CREATE INDEX appeals_decided ON appeals (decided_at) WHERE status <> 'open';
