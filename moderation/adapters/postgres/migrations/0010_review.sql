-- The human-review queue (moderation.adapters.postgres.review) and reviewer accounts
-- (moderation.adapters.postgres.reviewers). Times are unix seconds (double precision) of the
-- database server's clock, as the Redis queue used the Redis server's.

CREATE TABLE review_items (
    review_id              text PRIMARY KEY,
    policy_id              text NOT NULL,
    job_id                 text NOT NULL,
    item                   jsonb NOT NULL,            -- moderation.core.review.ReviewItem
    rank                   double precision NOT NULL, -- moderation.core.review.rank_key
    created_at             double precision NOT NULL,
    state                  text NOT NULL DEFAULT 'queued'
                           CHECK (state IN ('queued', 'leased', 'final')),
    lease_token            text,
    lease_holder           text,
    lease_expires          double precision,
    first_decision         jsonb,                     -- FirstDecision awaiting a second review
    first_reviewer         text,
    final_decision         jsonb,                     -- HumanDecision
    final_token            text,
    decided_at             double precision,
    CHECK ((state = 'leased') = (lease_token IS NOT NULL))
);
-- Claiming: the highest rank among waiting items (all policies, or some).
CREATE INDEX review_items_waiting ON review_items (rank DESC) WHERE state = 'queued';
CREATE INDEX review_items_waiting_policy ON review_items (policy_id, rank DESC)
    WHERE state = 'queued';
-- Reaping expired leases; one lease per reviewer at a time.
CREATE INDEX review_items_lease_expiry ON review_items (lease_expires) WHERE state = 'leased';
CREATE UNIQUE INDEX review_items_one_lease_per_reviewer ON review_items (lease_holder)
    WHERE state = 'leased';
-- SLA ages (oldest open item per policy) and the export (decision order).
CREATE INDEX review_items_open ON review_items (policy_id, created_at) WHERE state <> 'final';
CREATE INDEX review_items_decided ON review_items (decided_at) WHERE state = 'final';
CREATE INDEX review_items_job ON review_items (job_id);

-- Every policy that ever had an item (stats list them, empty or not).
CREATE TABLE review_policies (
    policy_id text PRIMARY KEY
);

-- Every lease handed out: tells "your lease expired" from "not yours" on a late decision, and
-- answers "what did this reviewer claim". Rows older than a day are pruned.
CREATE TABLE review_leases (
    token      text PRIMARY KEY,
    review_id  text NOT NULL REFERENCES review_items (review_id) ON DELETE CASCADE,
    reviewer   text NOT NULL,
    claimed_at double precision NOT NULL,
    expires_at double precision NOT NULL
);
CREATE INDEX review_leases_claimed ON review_leases (claimed_at);

-- Every recorded decision (first, second or only), one per lease token: replays of a submit,
-- decisions per reviewer and day, "everything this reviewer decided".
CREATE TABLE review_decisions (
    token       text PRIMARY KEY,
    review_id   text NOT NULL REFERENCES review_items (review_id) ON DELETE CASCADE,
    reviewer    text NOT NULL,
    decision    text NOT NULL,
    reason_code text,
    decided_at  double precision NOT NULL,
    day         date NOT NULL
);
CREATE INDEX review_decisions_day ON review_decisions (day, reviewer);
CREATE INDEX review_decisions_reviewer ON review_decisions (reviewer, decided_at);
CREATE INDEX review_decisions_review ON review_decisions (review_id);

-- The outbox: final decisions not yet handed on (job result, audit, callback). A delivery
-- that fails is tried again at due_at, with a growing delay (attempts).
CREATE TABLE review_outbox (
    review_id  text PRIMARY KEY REFERENCES review_items (review_id) ON DELETE CASCADE,
    decided_at double precision NOT NULL,
    due_at     double precision NOT NULL,
    attempts   integer NOT NULL DEFAULT 0,
    last_error text
);
CREATE INDEX review_outbox_due ON review_outbox (due_at);

-- Reviewer accounts (argon2id hashes only; never a password).
CREATE TABLE reviewer_accounts (
    username      text PRIMARY KEY,
    role          text NOT NULL,
    password_hash text NOT NULL,
    disabled      boolean NOT NULL DEFAULT false,
    created_at    double precision NOT NULL
);
