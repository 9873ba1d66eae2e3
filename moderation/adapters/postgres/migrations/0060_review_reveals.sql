-- Reveals: a reviewer looked at an item's image unblurred. A critical item needs one by the
-- deciding reviewer before "allow" or "remove" (moderation.pipeline.review_desk).
CREATE TABLE review_reveals (
    review_id text NOT NULL REFERENCES review_items (review_id) ON DELETE CASCADE,
    reviewer  text NOT NULL,
    at        double precision NOT NULL,
    PRIMARY KEY (review_id, reviewer)
);
