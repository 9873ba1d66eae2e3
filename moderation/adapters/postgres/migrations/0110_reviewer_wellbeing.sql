-- Reviewer wellbeing (moderation.core.wellbeing): each reviewer's display and break settings,
-- the items shown to each reviewer per day (critical ones, unblurred ones) and their answers to
-- break prompts. Reviewers are their pseudonyms (rv_...).
CREATE TABLE reviewer_wellbeing (
    reviewer   text PRIMARY KEY,
    settings   jsonb NOT NULL,
    updated_at double precision NOT NULL
);
CREATE TABLE reviewer_exposure (
    reviewer  text NOT NULL,
    day       date NOT NULL,
    review_id text NOT NULL,
    critical  boolean NOT NULL,
    revealed  boolean NOT NULL,
    -- When the item was first shown to the reviewer that day.
    at        double precision NOT NULL,
    PRIMARY KEY (reviewer, day, review_id)
);
CREATE INDEX reviewer_exposure_day ON reviewer_exposure (day);
CREATE TABLE reviewer_breaks (
    reviewer      text NOT NULL,
    day           date NOT NULL,
    last_break_at double precision NOT NULL,
    taken         integer NOT NULL DEFAULT 0,
    dismissed     integer NOT NULL DEFAULT 0,
    PRIMARY KEY (reviewer, day)
);
