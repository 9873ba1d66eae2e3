-- Results as the API answers them: the result's JSON as text in ``result_text``, written once per
-- change and read back as is, as Redis answered them before (no JSONB-to-text conversion on
-- every status poll, no JSON parsed into JSONB on every create and ending). ``result`` (JSONB)
-- is no longer written: nothing queries inside a result (what queries filter on, tenant,
-- status, decision and times, are columns), and keeping both copies took about 1.7 KB more per
-- job (docs/performance.md). An ad hoc query into a result casts: ``result_text::jsonb``.
--
-- Rows written before this migration have ``result_text`` NULL and their result in ``result``:
-- readers take coalesce(result_text, result::text). Both statements change the catalogue only
-- (no table rewrite, no long lock on a large table).

ALTER TABLE jobs ADD COLUMN result_text text;
ALTER TABLE jobs ALTER COLUMN result DROP NOT NULL;
