-- Status polls of jobs not ended answered without a JSONB conversion: while a job has not ended
-- its result (the queued placeholder the API answers to every poll) is kept as the JSON text
-- written, in ``result_text``, and read back as is, as Redis answered it; ``result`` (JSONB)
-- is NULL, so a create parses no JSON into JSONB for it. When the job ends, the final result
-- goes to ``result`` as JSONB (what the image history and other queries read) and
-- ``result_text`` back to NULL: one copy per row, never both. A reader takes
-- coalesce(result_text, result::text); a final result is converted once per reader.
--
-- Rows written before this migration have ``result_text`` NULL and their result in ``result``,
-- read the same way. Both statements change the catalogue only (no table rewrite, no long
-- lock on a large table).

ALTER TABLE jobs ADD COLUMN result_text text;
ALTER TABLE jobs ALTER COLUMN result DROP NOT NULL;
