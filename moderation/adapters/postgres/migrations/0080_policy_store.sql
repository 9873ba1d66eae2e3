-- The policy store (moderation.adapters.postgres.policies): every version of every policy
-- document ever published or promoted, for clusters where policies live in the database rather
-- than a ConfigMap (``policy_source: database``). Exemplar images are not here: a document names
-- each by its path and sha256, and the bytes are in the object store under that sha256.

CREATE TABLE policy_documents (
    id          bigserial PRIMARY KEY,
    policy_id   text NOT NULL,
    version     integer NOT NULL,
    -- live: acted on; shadow: evaluated beside the live one; retired: kept, not served
    slot        text NOT NULL CHECK (slot IN ('live', 'shadow', 'retired')),
    body        text NOT NULL,                  -- the policy YAML, as written
    exemplars   jsonb NOT NULL DEFAULT '{}',    -- relative path -> sha256 of the image
    added_by    text NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    retired_at  timestamptz
);

-- At most one live and one shadow document per policy.
CREATE UNIQUE INDEX policy_documents_serving ON policy_documents (policy_id, slot)
    WHERE slot <> 'retired';

-- One row: moves on every change of the served set (workers poll it, then reload).
CREATE TABLE policy_store_version (
    one     boolean PRIMARY KEY DEFAULT true CHECK (one),
    version bigint NOT NULL
);
INSERT INTO policy_store_version (one, version) VALUES (true, 0);
