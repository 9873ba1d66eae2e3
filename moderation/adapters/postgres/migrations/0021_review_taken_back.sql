-- An admin's requeue marks the lease it took back, so its holder is told "an admin took this
-- item back" rather than "your lease expired".
ALTER TABLE review_leases ADD COLUMN taken_back boolean NOT NULL DEFAULT false;
