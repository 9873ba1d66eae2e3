-- Review queues: every item is in one named queue ("review" first; "escalation" once a reviewer
-- escalated it; other workflows add theirs), and each account may claim from its role's queues
-- plus the ones granted to it (moderation.core.reviewers.allowed_queues).
ALTER TABLE review_items ADD COLUMN queue text NOT NULL DEFAULT 'review';
-- When the item entered its current queue (the escalation SLA age).
ALTER TABLE review_items ADD COLUMN queued_at double precision;
CREATE INDEX review_items_waiting_queue ON review_items (queue, rank DESC) WHERE state = 'queued';
CREATE INDEX review_items_open_queue ON review_items (queue, policy_id, created_at)
    WHERE state <> 'final';
ALTER TABLE reviewer_accounts ADD COLUMN queues text[] NOT NULL DEFAULT '{}';
