-- Earlier decisions on the same image, for the reviewer's context panel
-- (moderation.adapters.postgres.image_history): a tenant's jobs by the hash of the scored
-- bytes and by PDQ hash. Both indexes start with the tenant: a lookup never reads, and never
-- waits on, another tenant's rows. Partial: jobs without a hash (errors, queued) are not in them.
CREATE INDEX jobs_tenant_content_sha256 ON jobs (tenant, (result ->> 'content_sha256'), created_at)
    WHERE result ->> 'content_sha256' IS NOT NULL;
CREATE INDEX jobs_tenant_content_pdq ON jobs (tenant, (result ->> 'content_pdq'), created_at)
    WHERE result ->> 'content_pdq' IS NOT NULL;
