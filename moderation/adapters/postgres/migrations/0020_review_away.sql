-- Skips: an item a reviewer skipped is not offered to that reviewer again until "until"
-- (seconds since the epoch, the database clock); others get it at once.
CREATE TABLE review_away (
    reviewer  text NOT NULL,
    review_id text NOT NULL,
    until     double precision NOT NULL,
    PRIMARY KEY (reviewer, review_id)
);
CREATE INDEX review_away_until ON review_away (until);
